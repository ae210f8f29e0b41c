//! sluice: an HTTP-to-SQL pooling gateway for PostgreSQL, built for serverless functions.
//!
//! Functions send SQL over HTTP(S); the gateway runs it on a capped pool of real Postgres
//! connections per tenant, under one hard connection budget per Postgres server, with
//! per-tenant rate limits — so a burst of function instances never becomes a connection storm.
//!
//! # The path of one request, module by module
//!
//! 1. [`server`] accepts the TCP connection; on an HTTPS listener [`tls`] runs the handshake
//!    (bounded in time and in number); `server::connection` then serves HTTP/1.1 or HTTP/2 and
//!    hands each request to [`api`]. On plain HTTP/1.1 an ordinary request is served by
//!    `server::http1_fast` without hyper; anything else, and TLS and HTTP/2, by hyper. An idle
//!    HTTP/1.1 keep-alive connection is parked down to its socket (`server::activity` tells
//!    when hyper is between requests).
//! 2. [`api`] (`api::router`): a browser's preflight is answered from the tenants' origins
//!    ([`cors`], in `api::cors`); an end user's bearer token is verified with [`jwt`]
//!    (`api::end_user`) before routing; then the route is picked.
//! 3. `api::request` resolves the [`tenant`] (its config, its pool, its end user): an API key
//!    through [`auth`] (key → tenant), with failed attempts limited per client address by
//!    [`admission`]; the origin is checked against the tenant's; the tenant's rate limit
//!    ([`admission`]) answers 429 before anything else is spent. Only then is the body read,
//!    bounded in size, time and the gateway's memory budget (`api::memory`).
//! 4. The route's handler (`api::query`, `api::batch`, `api::transactions`, `api::stream`,
//!    `api::neon` for `POST /sql`) checks the statement before it goes near a connection: the
//!    SQL lexer ([`pg`]`::sql`, its analyses memoised per text) counts statements and
//!    placeholders and notes session effects, and parameters are checked ([`pg`]`::params`).
//! 5. [`pool`] checks a connection out of the tenant's pool: an idle one, a new one under the
//!    upstream's budget (in cluster mode, this replica's share: [`cluster`]), or a place in the
//!    tenant's bounded FIFO queue with a deadline. Interactive transactions
//!    ([`transactions`]) keep their connection between calls instead (a call that lands on
//!    another replica is forwarded to its owner: `api::forward`).
//! 6. [`pg`]`::conn` runs the statement in the wire protocol (parameters as text, a cached
//!    prepared statement when warm, a pipeline for batches and end users' `BEGIN`/`COMMIT`),
//!    over TCP, a Unix socket or [`pg`]`::tls` to Postgres.
//! 7. Rows are encoded to JSON as they arrive ([`pg`]`::encode`), straight into the response
//!    by the API's result writers (`api::results`; Neon's shapes in `api::neon`), under the
//!    response size limit; errors become API.md's kinds in `api::error`, the only place that
//!    knows status codes.
//! 8. Dropping the checkout returns the connection: clean, or reset in the background, or
//!    closed. The router counts the request in [`metrics`] (the pool and the transactions
//!    record through traits of their own, wired in `api::telemetry`) and writes its access
//!    line through [`logging`], off the request path, with times as [`timestamp`] prints them.
//!
//! Around the path: [`config`] turns the TOML file (or environment) into a validated
//! configuration once, and again on reload; [`check`] is `sluice check`; [`allocator`] and
//! [`panic`](mod@panic) are process set-up (malloc tuning and trimming, a panic hook that
//! never logs request data); [`deadline`] is the reusable timer behind the read deadlines of
//! Postgres and HTTP/1 connections. `dev` (the `dev` cargo feature, on by default) is the throwaway
//! Postgres behind `sluice dev` and the tests; nothing on the request path uses it.
//! [`fuzzing`] is the entry surface of the fuzz targets in `fuzz/`, not an API.

pub mod admission;
pub mod allocator;
pub mod api;
pub mod auth;
pub mod check;
pub mod cluster;
pub mod config;
pub mod cors;
pub mod deadline;
#[cfg(feature = "dev")]
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
pub mod shard;
pub mod tenant;
pub mod timestamp;
pub mod tls;
pub mod transactions;
