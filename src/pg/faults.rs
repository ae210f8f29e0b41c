//! A test-only seam that makes the real I/O path fail at chosen points, for one server (by
//! port): a connection attempt refused, a cancel request lost on its way, a close whose
//! backend never ends, the socket closed in the middle of a message either way. Not a mock of Postgres: everything else runs against a real server.
//! Compiled in for the crate's own tests and with the `fault-injection` feature; otherwise
//! every check is a constant `false`.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `PgConnection` attempts are refused before they reach the server.
    ConnectRefused,
    /// Cancel requests are dropped (as if one reached the backend before its statement).
    CancelLost,
    /// Closing a connection never sees the server end the session while armed.
    CloseHangs,
    /// The socket is shut down halfway through writing a request: the server receives a
    /// truncated message, then end-of-file (a link or middlebox dying mid-write).
    WriteCut,
    /// The socket is shut down right after a read, and that read's last byte is dropped: the
    /// gateway holds a truncated server message, then sees end-of-file.
    ReadCut,
}

#[cfg(any(test, feature = "fault-injection"))]
mod armed {
    use std::sync::Mutex;

    use super::Fault;
    use crate::pg::target::Target;

    /// (port, fault, remaining hits; `u32::MAX` until disarmed).
    static ARMED: Mutex<Vec<(u16, Fault, u32)>> = Mutex::new(Vec::new());

    fn port(target: &Target) -> Option<u16> {
        match target {
            Target::Tcp { port, .. } => Some(*port),
            Target::Unix { .. } => None,
        }
    }

    /// Arms `fault` for the server on `port`, for `times` hits (`None`: until disarmed).
    pub fn arm(port: u16, fault: Fault, times: Option<u32>) {
        let mut armed = ARMED.lock().unwrap();
        armed.retain(|(p, f, _)| !(*p == port && *f == fault));
        armed.push((port, fault, times.unwrap_or(u32::MAX)));
    }

    pub fn disarm(port: u16, fault: Fault) {
        ARMED
            .lock()
            .unwrap()
            .retain(|(p, f, _)| !(*p == port && *f == fault));
    }

    /// Whether `fault` strikes now for `target` (uses up one hit).
    pub(crate) fn strikes(target: &Target, fault: Fault) -> bool {
        let Some(port) = port(target) else {
            return false;
        };
        let mut armed = ARMED.lock().unwrap();
        let Some(entry) = armed.iter_mut().find(|(p, f, _)| *p == port && *f == fault) else {
            return false;
        };
        if entry.2 != u32::MAX {
            entry.2 -= 1;
        }
        if entry.2 == 0 {
            armed.retain(|(p, f, _)| !(*p == port && *f == fault));
        }
        true
    }

    /// Whether `fault` is armed for `target` (without using up a hit).
    pub(crate) fn armed(target: &Target, fault: Fault) -> bool {
        port(target).is_some_and(|port| {
            ARMED
                .lock()
                .unwrap()
                .iter()
                .any(|(p, f, _)| *p == port && *f == fault)
        })
    }
}

#[cfg(any(test, feature = "fault-injection"))]
pub use armed::{arm, disarm};
#[cfg(any(test, feature = "fault-injection"))]
pub(crate) use armed::{armed, strikes};

#[cfg(not(any(test, feature = "fault-injection")))]
#[inline(always)]
pub(crate) fn strikes(_: &crate::pg::target::Target, _: Fault) -> bool {
    false
}

#[cfg(not(any(test, feature = "fault-injection")))]
#[inline(always)]
pub(crate) fn armed(_: &crate::pg::target::Target, _: Fault) -> bool {
    false
}
