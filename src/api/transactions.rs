//! `/v1/transactions`: begin, query, batch, commit and rollback of interactive transactions
//! (see `crate::transactions` for the registry and its timeouts).

use std::time::{Duration, Instant};

use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::batch::{BatchRequest, Isolation, begin_sql, check_statements};
use super::body::Body;
use super::error::ApiError;
use super::query::{Limits, QueryRequest, run_one};
use super::{RequestContext, Tenant};
use crate::pg::QueryError;
use crate::transactions::{BeginOptions, TransactionError, rfc3339, short};

impl From<TransactionError> for ApiError {
    fn from(error: TransactionError) -> ApiError {
        match error {
            TransactionError::NotFound { expired } => ApiError::TransactionNotFound { expired },
            TransactionError::Busy => ApiError::TransactionBusy,
            TransactionError::TooMany { retry_after } => {
                ApiError::TooManyTransactions { retry_after }
            }
            TransactionError::Pool(error) => error.into(),
            TransactionError::Query(QueryError::Db(error)) => ApiError::Database {
                error,
                statement_index: None,
            },
            TransactionError::Query(error) => error.into(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct BeginRequest {
    pub(crate) isolation: Option<Isolation>,
    pub(crate) read_only: Option<bool>,
    pub(crate) deferrable: Option<bool>,
    pub(crate) idle_timeout_ms: Option<u64>,
}

/// What a call on `/v1/transactions/{id}/…` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Query,
    Batch,
    Commit,
    Rollback,
}

impl Action {
    /// The last segment of the call's path.
    pub fn path(self) -> &'static str {
        match self {
            Action::Query => "query",
            Action::Batch => "batch",
            Action::Commit => "commit",
            Action::Rollback => "rollback",
        }
    }
}

pub async fn begin(
    ctx: &mut RequestContext<'_>,
    tenant: &Tenant,
    body: &[u8],
) -> Result<http::Response<Body>, ApiError> {
    let request: BeginRequest = if body.iter().all(u8::is_ascii_whitespace) {
        BeginRequest::default()
    } else {
        super::parse_json(body)?
    };
    let idle_timeout = match request.idle_timeout_ms {
        Some(0) => {
            return Err(ApiError::BadRequest(
                "`idleTimeoutMs` must be above 0".into(),
            ));
        }
        // Never above the tenant's.
        Some(ms) => Duration::from_millis(ms).min(tenant.config.transaction_idle_timeout),
        None => tenant.config.transaction_idle_timeout,
    };
    let options = BeginOptions {
        // The end user's role and claims are fixed here, for the whole transaction.
        begin_sql: super::end_user::begin_for(
            tenant.end_user.as_ref(),
            &begin_sql(request.isolation, request.read_only, request.deferrable),
        ),
        idle_timeout,
        owner: tenant.pool.replica_id(),
    };
    let waited = Instant::now();
    let transaction = ctx.app.transactions.begin(tenant, options).await?;
    ctx.log.queue_wait = Some(waited.elapsed());
    ctx.log.transaction = Some(short(transaction.id()));
    let body = json!({
        "id": transaction.id(),
        "idleTimeoutMs": transaction.idle_timeout().as_millis() as u64,
        "expiresAt": rfc3339(transaction.expires_at()),
    });
    Ok(Body::json_response(StatusCode::CREATED, &body))
}

pub async fn call(
    ctx: &mut RequestContext<'_>,
    tenant: &Tenant,
    id: &str,
    action: Action,
    body: &[u8],
) -> Result<http::Response<Body>, ApiError> {
    ctx.log.transaction = Some(short(id));
    // Cluster mode: a transaction another replica owns is called there.
    if let Some(response) = super::forward::to_owner(ctx, tenant, id, action.path(), body).await? {
        return Ok(response);
    }
    let transactions = ctx.app.transactions.clone();
    // The body is checked before the transaction is touched: a malformed call never makes
    // another wait.
    match action {
        Action::Query => {
            let request: QueryRequest = super::parse_json(body)?;
            let prepared = request.check(Limits::of(ctx, tenant))?;
            super::end_user::check_sql(tenant, prepared.sql)?;
            if prepared.analysis.transaction_control {
                return Err(ApiError::BadRequest(
                    "end the transaction with /commit or /rollback; savepoints are fine".into(),
                ));
            }
            let transaction = transactions.get(id, tenant)?;
            let mut call = transactions.call(&transaction)?;
            if super::stream::wants_ndjson(ctx.headers) {
                let holder = super::stream::Holder::Transaction(call);
                let owned = request.owned(&prepared);
                return super::stream::respond(ctx, tenant, owned, holder).await;
            }
            let mut out = Vec::with_capacity(256);
            let mut writer = request.writer(&mut out, ctx.max_response_bytes);
            run_one(ctx, call.conn(), &prepared, tenant, &mut writer)
                .await
                .map_err(|e| ApiError::after_call(&call, e))?;
            Ok(Body::json_bytes(StatusCode::OK, out))
        }
        Action::Batch => {
            let request: BatchRequest = super::parse_json(body)?;
            let Some(statements) = &request.statements else {
                return Err(ApiError::BadRequest("send `statements`".into()));
            };
            if request.script.is_some()
                || request.transaction.is_some()
                || request.isolation.is_some()
                || request.read_only.is_some()
                || request.deferrable.is_some()
            {
                return Err(ApiError::BadRequest(
                    "inside a transaction a batch takes `statements` (with `rowMode`, `types`, `timeoutMs`) only".into(),
                ));
            }
            let batch = check_statements(statements, request.timeout_ms, Limits::of(ctx, tenant))?;
            for statement in &batch.statements {
                super::end_user::check_sql(tenant, statement.sql)?;
            }
            let transaction = transactions.get(id, tenant)?;
            let mut call = transactions.call(&transaction)?;
            let mut out = Vec::with_capacity(256);
            let mut writer = request.writer(&mut out, ctx.max_response_bytes);
            batch
                .run(ctx, call.conn(), None, tenant, &mut writer)
                .await
                .map_err(|e| ApiError::after_call(&call, e))?;
            Ok(Body::json_bytes(StatusCode::OK, out))
        }
        Action::Commit | Action::Rollback => {
            if !body.iter().all(u8::is_ascii_whitespace) && body != b"{}" {
                return Err(ApiError::BadRequest(
                    "commit and rollback take no body".into(),
                ));
            }
            let transaction = transactions.get(id, tenant)?;
            let call = transactions.call(&transaction)?;
            let executed = Instant::now();
            let command = transactions
                .finish(call, action == Action::Commit)
                .await
                .map_err(ApiError::from);
            ctx.log.exec = Some(executed.elapsed());
            Ok(Body::json_response(
                StatusCode::OK,
                &json!({ "command": command? }),
            ))
        }
    }
}
