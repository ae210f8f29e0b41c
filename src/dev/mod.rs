//! Dev tooling, behind the `dev` cargo feature (on by default): a throwaway local Postgres for
//! `sluice dev` and the test harness, throwaway certificates, the demo tables, and the `dev`
//! command itself. Nothing on the request path uses it; `cargo build --no-default-features`
//! builds the gateway without it (and without `rcgen`).
//!
//! The cluster is created in a temporary directory (as an unprivileged user when run as root
//! — Postgres refuses to run as root), with SCRAM password authentication as production
//! servers use, started on a free port and removed when dropped. A watchdog process removes
//! it too if this process dies without running its destructors (a test binary exiting, a
//! `kill -9`).

mod binaries;
mod certs;
mod command;
mod postgres;
mod seed;

pub use binaries::PostgresBinaries;
pub use certs::{DevCa, DevCert};
pub use command::{DevOptions, run};
pub use postgres::{TempPostgres, TempPostgresOptions, free_port};
