//! Every way a request can fail, as API.md's error kinds: each maps, by one exhaustive match, to
//! its kind, HTTP status, whether a retry is safe (`Retry-After`), and a message that is safe to
//! show the client. Internal details go to the log, never into a response.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};

use super::body::Body;
use crate::pg::{DbError, QueryError};
use crate::pool::PoolError;
use crate::transactions::TransactionCall;

#[derive(Debug)]
pub enum ApiError {
    /// The client's mistake: malformed JSON, unknown field, wrong type, several statements…
    BadRequest(String),
    /// The tenant's SQL failed in Postgres.
    Database {
        error: Box<DbError>,
        statement_index: Option<usize>,
    },
    Unauthorized(String),
    Forbidden(String),
    /// No such route.
    NotFound,
    MethodNotAllowed {
        allow: &'static str,
    },
    TransactionNotFound {
        expired: bool,
    },
    TransactionBusy,
    /// Cluster mode: the replica that owns the transaction is gone or cannot be reached
    /// (`reason`: `owner_gone`, `owner_unreachable`); `message` says which replica and why.
    TransactionOwnerGone {
        reason: &'static str,
        message: String,
    },
    PayloadTooLarge {
        limit: usize,
    },
    ResponseTooLarge {
        limit: usize,
    },
    RateLimited {
        retry_after: Duration,
        reason: &'static str,
    },
    PoolTimeout {
        retry_after: Duration,
    },
    QueueFull {
        retry_after: Duration,
    },
    TooManyTransactions {
        retry_after: Duration,
    },
    /// The gateway's memory bound for bodies and responses (`max_buffered_bytes`) stayed in
    /// use while the request waited; nothing ran.
    Overloaded {
        retry_after: Duration,
    },
    /// Postgres unreachable or refusing; `reason` is for the log.
    UpstreamUnavailable {
        retry_after: Duration,
        reason: String,
    },
    /// The connection died while the statement ran; `reason` is for the log.
    ConnectionLost {
        reason: String,
    },
    /// A bug; `reason` is for the log.
    Internal {
        reason: String,
    },
}

impl ApiError {
    /// What a failed transaction call answers: once the gateway expires the transaction, the
    /// statement it cut short answers as any later call does.
    pub fn after_call(call: &TransactionCall, error: ApiError) -> ApiError {
        if call.is_expiring() {
            ApiError::TransactionNotFound { expired: true }
        } else {
            error
        }
    }
}

impl ApiError {
    /// API.md's error kind; also the `outcome` label of request metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Database { .. } => "database",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::TransactionNotFound { .. } | ApiError::TransactionOwnerGone { .. } => {
                "transaction_not_found"
            }
            ApiError::TransactionBusy => "transaction_busy",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::ResponseTooLarge { .. } => "response_too_large",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::PoolTimeout { .. } => "pool_timeout",
            ApiError::QueueFull { .. } => "queue_full",
            ApiError::TooManyTransactions { .. } => "too_many_transactions",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::UpstreamUnavailable { .. } => "upstream_unavailable",
            ApiError::ConnectionLost { .. } => "connection_lost",
            ApiError::Internal { .. } => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::Database { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound
            | ApiError::TransactionNotFound { .. }
            | ApiError::TransactionOwnerGone { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TransactionBusy => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } | ApiError::ResponseTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::PoolTimeout { .. }
            | ApiError::QueueFull { .. }
            | ApiError::TooManyTransactions { .. }
            | ApiError::Overloaded { .. }
            | ApiError::UpstreamUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::ConnectionLost { .. } => StatusCode::BAD_GATEWAY,
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// For 429 and 503: when to retry (the statement did not run).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::RateLimited { retry_after, .. }
            | ApiError::PoolTimeout { retry_after }
            | ApiError::QueueFull { retry_after }
            | ApiError::TooManyTransactions { retry_after }
            | ApiError::Overloaded { retry_after }
            | ApiError::UpstreamUnavailable { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// What the client is told.
    pub fn message(&self) -> String {
        match self {
            ApiError::BadRequest(message) | ApiError::Unauthorized(message) | ApiError::Forbidden(message) => {
                message.clone()
            }
            ApiError::Database { error, .. } => error.message.clone(),
            ApiError::NotFound => "no such route; see the API reference".into(),
            ApiError::MethodNotAllowed { allow } => format!("this route only accepts {allow}"),
            ApiError::TransactionNotFound { expired: true } => {
                "the transaction expired (idle or lifetime timeout) and was rolled back".into()
            }
            ApiError::TransactionNotFound { expired: false } => "no such transaction".into(),
            ApiError::TransactionBusy => "another call is running on this transaction".into(),
            ApiError::TransactionOwnerGone { message, .. } => message.clone(),
            ApiError::PayloadTooLarge { limit } => format!("the request body is larger than {limit} bytes"),
            ApiError::ResponseTooLarge { limit } => format!(
                "the result is larger than {limit} bytes; select fewer rows, or stream it with Accept: application/x-ndjson"
            ),
            ApiError::RateLimited { reason, .. } => (*reason).to_owned(),
            ApiError::PoolTimeout { .. } => "no database connection became free in time; retry after Retry-After".into(),
            ApiError::QueueFull { .. } => "too many requests are waiting for a database connection; retry after Retry-After".into(),
            ApiError::TooManyTransactions { .. } => "the tenant has its maximum of open transactions".into(),
            ApiError::Overloaded { .. } => {
                "the gateway's memory for request bodies and responses is in use; nothing ran, retry after Retry-After".into()
            }
            ApiError::UpstreamUnavailable { .. } => "the database is unavailable; retry after Retry-After".into(),
            ApiError::ConnectionLost { .. } => {
                "the database connection was lost while the statement ran; it may or may not have taken effect".into()
            }
            ApiError::Internal { .. } => "internal error".into(),
        }
    }

    /// `{"error": {"kind": …, "message": …, …}}`
    pub fn to_json(&self) -> serde_json::Value {
        let mut error = serde_json::Map::new();
        error.insert("kind".into(), self.kind().into());
        error.insert("message".into(), self.message().into());
        match self {
            ApiError::Database {
                error: db,
                statement_index,
            } => {
                insert_db_fields(&mut error, db);
                if let Some(index) = statement_index {
                    error.insert("statementIndex".into(), (*index).into());
                }
            }
            ApiError::TransactionNotFound { expired: true } => {
                error.insert("reason".into(), "expired".into());
            }
            ApiError::TransactionOwnerGone { reason, .. } => {
                error.insert("reason".into(), (*reason).into());
            }
            ApiError::PayloadTooLarge { limit } | ApiError::ResponseTooLarge { limit } => {
                error.insert("limit".into(), (*limit).into());
            }
            _ => {}
        }
        if let Some(retry_after) = self.retry_after() {
            error.insert(
                "retryAfterMs".into(),
                (retry_after.as_millis() as u64).into(),
            );
        }
        serde_json::json!({ "error": error })
    }

    pub fn into_response(self) -> Response<Body> {
        let mut response = Body::json_response(self.status(), &self.to_json());
        if let Some(retry_after) = self.retry_after() {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, retry_after_header(retry_after));
        }
        if let ApiError::MethodNotAllowed { allow } = self {
            response
                .headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }

    /// The detail an operator needs, for the log line (never sent to the client).
    pub fn log_detail(&self) -> Option<&str> {
        match self {
            ApiError::UpstreamUnavailable { reason, .. }
            | ApiError::ConnectionLost { reason }
            | ApiError::Internal { reason } => Some(reason),
            _ => None,
        }
    }
}

/// Whole seconds, rounded up, at least 1: `Retry-After: 0` would invite an instant retry storm.
pub fn retry_after_header(wait: Duration) -> HeaderValue {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    HeaderValue::from(seconds.max(1))
}

fn insert_db_fields(map: &mut serde_json::Map<String, serde_json::Value>, db: &DbError) {
    map.insert("code".into(), db.code.clone().into());
    map.insert("severity".into(), db.severity.clone().into());
    let optional: [(&str, &Option<String>); 11] = [
        ("detail", &db.detail),
        ("hint", &db.hint),
        ("where", &db.where_),
        ("schema", &db.schema),
        ("table", &db.table),
        ("column", &db.column),
        ("dataType", &db.data_type),
        ("constraint", &db.constraint),
        ("internalQuery", &db.internal_query),
        ("file", &db.file),
        ("routine", &db.routine),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            map.insert(name.into(), value.clone().into());
        }
    }
    for (name, value) in [
        ("position", db.position),
        ("internalPosition", db.internal_position),
        ("line", db.line),
    ] {
        if let Some(value) = value {
            map.insert(name.into(), value.into());
        }
    }
}

impl From<PoolError> for ApiError {
    fn from(error: PoolError) -> ApiError {
        match error {
            PoolError::QueueFull { retry_after } => ApiError::QueueFull { retry_after },
            PoolError::Timeout { retry_after } => ApiError::PoolTimeout { retry_after },
            PoolError::Unavailable {
                retry_after,
                reason,
            } => ApiError::UpstreamUnavailable {
                retry_after,
                reason,
            },
            PoolError::ShuttingDown => ApiError::UpstreamUnavailable {
                retry_after: Duration::from_secs(1),
                reason: "the gateway is shutting down".into(),
            },
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(error: QueryError) -> ApiError {
        match error {
            QueryError::Db(error) => ApiError::Database {
                error,
                statement_index: None,
            },
            QueryError::Rejected(message) => ApiError::BadRequest(message),
            QueryError::ConnectionLost(reason) => ApiError::ConnectionLost { reason },
            QueryError::Gateway(reason) => ApiError::Internal { reason },
            // Not the client's fault and not a bug: the statement did not run, a retry may work.
            QueryError::Catalog(reason) => ApiError::UpstreamUnavailable {
                retry_after: Duration::from_secs(1),
                reason,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_header(Duration::from_millis(1)), "1");
        assert_eq!(retry_after_header(Duration::ZERO), "1");
        assert_eq!(retry_after_header(Duration::from_millis(2001)), "3");
        assert_eq!(retry_after_header(Duration::from_secs(4)), "4");
    }

    #[test]
    fn database_errors_carry_every_field() {
        let mut db = DbError::new(
            "23505",
            "duplicate key value violates unique constraint \"t_pkey\"",
        );
        db.detail = Some("Key (id)=(1) already exists.".into());
        db.constraint = Some("t_pkey".into());
        db.position = Some(8);
        let json = ApiError::Database {
            error: Box::new(db),
            statement_index: Some(2),
        }
        .to_json();
        let error = &json["error"];
        assert_eq!(error["kind"], "database");
        assert_eq!(error["code"], "23505");
        assert_eq!(error["constraint"], "t_pkey");
        assert_eq!(error["position"], 8);
        assert_eq!(error["statementIndex"], 2);
    }

    #[test]
    fn internal_details_stay_out_of_responses() {
        let error = ApiError::UpstreamUnavailable {
            retry_after: Duration::from_secs(1),
            reason: "connection refused at 10.0.0.7:5432".into(),
        };
        assert!(!error.to_json().to_string().contains("10.0.0.7"));
        assert_eq!(
            error.log_detail(),
            Some("connection refused at 10.0.0.7:5432")
        );
    }
}
