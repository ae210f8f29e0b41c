//! Everything Postgres: the wire-protocol connection, TLS to the server, the SQL lexer, types,
//! parameter encoding (JSON → Postgres text) and row encoding (Postgres text → JSON).

mod builtin_types;
pub mod conn;
pub mod encode;
pub mod error;
pub mod faults;
pub mod json;
pub mod params;
pub mod sql;
pub mod statement;
mod stream;
mod target;
pub mod tls;
pub mod types;

pub use conn::{
    AuthPolicy, CancelToken, ConnectConfig, PgConnection, PipelineError, PipelineStatement,
    QueryOptions, ResultSink, Rows, Target, TxStatus,
};
pub use encode::{RowEncoder, RowMode, ValueFormat};
pub use error::{ConnectError, DbError, QueryError};
pub use sql::{SessionEffect, SqlAnalysis};
pub use statement::{ColumnSource, CommandTag, Field, Statement};
pub use tls::{SslMode, TlsConnector};
pub use types::TypeRegistry;
