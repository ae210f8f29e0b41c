//! The HTTP API (API.md): routing, authentication, request bodies, and one handler module per
//! endpoint group. This layer alone knows about status codes; the stages below it answer with
//! their own error types, mapped to API.md's kinds in [`error`].
//! The request's way through this layer: [`router`] (routes, dispatch, the access log line),
//! [`request`] (what a handler knows of its request: tenant, body, request id), [`app`] (state
//! shared by every request, and the generation a reload replaces).

mod admin;
mod app;
pub mod batch;
pub mod body;
pub mod cors;
pub mod end_user;
pub mod error;
pub mod forward;
pub mod head;
mod health;
mod in_flight;
pub mod memory;
pub mod neon;
pub mod query;
mod request;
pub mod results;
mod router;
mod stream;
mod telemetry;
pub(crate) mod transactions;

pub use self::app::{App, Generation, Reloader};
use self::request::read_body;
pub use self::request::{
    RequestBody, RequestContext, RequestLog, Tenant, decode_request, parse_json,
};
pub use self::router::{Surface, handle};
