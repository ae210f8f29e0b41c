//! sluice: an HTTP-to-SQL pooling gateway for PostgreSQL, built for serverless functions.
//!
//! Functions send SQL over HTTP(S); the gateway runs it on a capped pool of real Postgres
//! connections per tenant, under one hard connection budget per Postgres server, with
//! per-tenant rate limits — so a burst of function instances never becomes a connection storm.
//!
//! # Layout: the path of one request
//!
//! 1. [`server`] accepts the connection (TCP, TLS; HTTP/1.1 or HTTP/2) and hands each HTTP
//!    request to [`api`]; an idle HTTP/1.1 keep-alive connection is parked down to its socket.
//! 2. [`api`] routes it, reads and bounds the body, and authenticates the key with [`auth`]
//!    (key → tenant); rate limits are checked before anything else is spent.
//! 3. [`pool`] checks a connection out of the tenant's pool: an idle one, a new one under the
//!    upstream's budget, or a place in the tenant's bounded FIFO queue with a deadline.
//! 4. [`pg`] runs the statement on that connection in the wire protocol (parameters as text,
//!    a cached prepared statement when warm) and encodes the rows to JSON straight into the
//!    response.
//! 5. Dropping the checkout returns the connection: clean, or cleaned in the background, or
//!    closed.
//!
//! [`config`] turns the TOML file (or environment) into a validated configuration once;
//! [`dev`] runs the throwaway Postgres behind `sluice dev` and the tests; [`check`] is
//! `sluice check`. [`fuzzing`] is the entry surface of the fuzz targets in `fuzz/`, not an API.
//! Browsers and end users: [`cors`] holds the tenants' allowed origins (answered ahead of
//! routing in `api::cors`), and [`jwt`] verifies end users' tokens in step 2, whose role and
//! claims then open each request's transaction.
//! Around the request path: [`admission`] (rate limits, failed-auth limiter) runs in step 2,
//! [`transactions`] keeps interactive transactions' connections between calls, [`metrics`]
//! counts, [`tls`] serves HTTPS; [`allocator`] and [`panic`] are process set-up (malloc tuning
//! and trimming, a panic hook that never logs request data); [`logging`] writes log lines off
//! the request path.
//!
//! `POST /sql` ([`api::neon`]) is Neon's SQL-over-HTTP protocol on the same path: only the
//! credentials' place, the request's shape and the response's differ.

pub mod admission;
pub mod allocator;
pub mod api;
pub mod auth;
pub mod check;
pub mod cluster;
pub mod config;
pub mod cors;
pub mod dev;
#[cfg(feature = "fault-injection")]
pub mod fault;
#[doc(hidden)]
pub mod fuzzing;
pub mod jwt;
pub mod logging;
pub mod metrics;
pub mod panic;
pub mod pg;
pub mod pool;
pub mod server;
pub mod tenant;
pub mod timestamp;
pub mod tls;
pub mod transactions;
