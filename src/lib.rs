pub mod api;
pub mod auth;
pub mod check;
pub mod config;
pub mod dev;
pub mod pg;
pub mod pool;
pub mod server;
