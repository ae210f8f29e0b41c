//! Errors from the Postgres side: a server's `ErrorResponse` with every field it sent, and the
//! failures of a connection or a statement as the pool and the API layer need to tell them apart.

use std::fmt;
use std::io;

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::ErrorFields;

/// An `ErrorResponse` (or a FATAL during start-up), with every field Postgres sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    pub position: Option<u32>,
    pub internal_position: Option<u32>,
    pub internal_query: Option<String>,
    pub where_: Option<String>,
    pub schema: Option<String>,
    pub table: Option<String>,
    pub column: Option<String>,
    pub data_type: Option<String>,
    pub constraint: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub routine: Option<String>,
}

impl DbError {
    pub(crate) fn parse(mut fields: ErrorFields<'_>) -> io::Result<DbError> {
        let mut error = DbError::default();
        let mut localized_severity = String::new();
        while let Some(field) = fields.next()? {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'S' => localized_severity = value,
                b'V' => error.severity = value,
                b'C' => error.code = value,
                b'M' => error.message = value,
                b'D' => error.detail = Some(value),
                b'H' => error.hint = Some(value),
                b'P' => error.position = value.parse().ok(),
                b'p' => error.internal_position = value.parse().ok(),
                b'q' => error.internal_query = Some(value),
                b'W' => error.where_ = Some(value),
                b's' => error.schema = Some(value),
                b't' => error.table = Some(value),
                b'c' => error.column = Some(value),
                b'd' => error.data_type = Some(value),
                b'n' => error.constraint = Some(value),
                b'F' => error.file = Some(value),
                b'L' => error.line = value.parse().ok(),
                b'R' => error.routine = Some(value),
                _ => {}
            }
        }
        if error.severity.is_empty() {
            error.severity = localized_severity;
        }
        Ok(error)
    }

    /// FATAL and PANIC end the session: the connection is gone after this error.
    pub fn is_fatal(&self) -> bool {
        matches!(self.severity.as_str(), "FATAL" | "PANIC")
    }

    /// Built by the gateway itself, e.g. for a protocol condition it reports like Postgres.
    pub fn new(code: &str, message: impl Into<String>) -> DbError {
        DbError {
            severity: "ERROR".into(),
            code: code.into(),
            message: message.into(),
            ..DbError::default()
        }
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)
    }
}

impl std::error::Error for DbError {}

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach the server: {0}")]
    Io(#[from] io::Error),
    #[error("no connection within {0} ms")]
    Timeout(u64),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the server refused the connection: {0}")]
    Rejected(Box<DbError>),
    #[error("unexpected message from the server during start-up: {0}")]
    Protocol(String),
    #[error("{0}")]
    Unsupported(String),
}

/// Why a statement did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Postgres raised an error for the tenant's SQL; the connection is fine.
    #[error("{0}")]
    Db(Box<DbError>),
    /// The request cannot be run as written (parameter count, a `COPY` over HTTP, …); nothing
    /// ran unless the variant says so.
    #[error("{0}")]
    Rejected(String),
    /// The connection failed while the statement was in flight: its outcome is unknown.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The gateway's own SQL (type lookup, session reset) failed: the connection is closed.
    #[error("gateway statement failed: {0}")]
    Gateway(String),
    /// The gateway's own catalog lookup (types of a statement being prepared) failed: the
    /// tenant's statement did not run.
    #[error("the type lookup failed: {0}")]
    Catalog(String),
}

impl QueryError {
    pub(crate) fn db(error: DbError) -> QueryError {
        QueryError::Db(Box::new(error))
    }
}
