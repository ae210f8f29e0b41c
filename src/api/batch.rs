//! `POST /v1/batch`: several statements in one atomic transaction, pipelined (one round trip to
//! Postgres when the statements are warm, two otherwise); or a multi-statement script with the
//! simple query protocol, in one transaction or, with `"transaction": false`, one statement at
//! a time (for `CREATE INDEX CONCURRENTLY`, `VACUUM`).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use http::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::body::Body;
use super::error::ApiError;
use super::query::{Limits, check_sql, check_statement};
use super::results::{BoundedSink, ResultWriter, write_command};
use super::{RequestContext, Tenant};
use crate::pg::json::write_json_array;
use crate::pg::{
    CommandTag, PgConnection, PipelineError, PipelineStatement, QueryError, QueryOptions, RowMode,
    SessionEffect, SqlAnalysis, ValueFormat,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BatchRequest<'a> {
    #[serde(borrow)]
    pub statements: Option<Vec<StatementRequest<'a>>>,
    #[serde(borrow)]
    pub script: Option<Cow<'a, str>>,
    pub transaction: Option<bool>,
    pub isolation: Option<Isolation>,
    pub read_only: Option<bool>,
    pub deferrable: Option<bool>,
    #[serde(default)]
    pub row_mode: RowMode,
    #[serde(default)]
    pub types: ValueFormat,
    pub timeout_ms: Option<u64>,
}

impl BatchRequest<'_> {
    /// The writer of this batch's results (its `rowMode` and `types`) into `out`.
    pub(crate) fn writer<'o>(&self, out: &'o mut Vec<u8>, max_bytes: usize) -> ResultWriter<'o> {
        ResultWriter::new(out, self.row_mode, self.types, max_bytes)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementRequest<'a> {
    #[serde(borrow)]
    pub sql: Cow<'a, str>,
    #[serde(borrow, default)]
    pub params: Vec<&'a RawValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Isolation {
    #[serde(rename = "read uncommitted")]
    ReadUncommitted,
    #[serde(rename = "read committed")]
    ReadCommitted,
    #[serde(rename = "repeatable read")]
    RepeatableRead,
    #[serde(rename = "serializable")]
    Serializable,
}

/// `BEGIN` with the requested isolation level and access mode.
pub fn begin_sql(
    isolation: Option<Isolation>,
    read_only: Option<bool>,
    deferrable: Option<bool>,
) -> String {
    let mut modes = Vec::new();
    if let Some(isolation) = isolation {
        modes.push(match isolation {
            Isolation::ReadUncommitted => "ISOLATION LEVEL READ UNCOMMITTED",
            Isolation::ReadCommitted => "ISOLATION LEVEL READ COMMITTED",
            Isolation::RepeatableRead => "ISOLATION LEVEL REPEATABLE READ",
            Isolation::Serializable => "ISOLATION LEVEL SERIALIZABLE",
        });
    }
    match read_only {
        Some(true) => modes.push("READ ONLY"),
        Some(false) => modes.push("READ WRITE"),
        None => {}
    }
    match deferrable {
        Some(true) => modes.push("DEFERRABLE"),
        Some(false) => modes.push("NOT DEFERRABLE"),
        None => {}
    }
    if modes.is_empty() {
        "BEGIN".to_owned()
    } else {
        format!("BEGIN {}", modes.join(", "))
    }
}

/// Statements checked on the gateway: one statement each, placeholders matching parameters,
/// no transaction control (the gateway owns BEGIN and COMMIT).
pub fn check_statements<'a>(
    statements: &'a [StatementRequest<'a>],
    timeout_ms: Option<u64>,
    limits: Limits,
) -> Result<CheckedBatch<'a>, ApiError> {
    if statements.is_empty() {
        return Err(ApiError::BadRequest("`statements` is empty".into()));
    }
    let mut checked = Vec::with_capacity(statements.len());
    let mut timeout = limits.statement_timeout_ms;
    for (i, statement) in statements.iter().enumerate() {
        let prepared = check_statement(&statement.sql, &statement.params, timeout_ms, limits)
            .map_err(|e| prefix(e, &format!("statements[{i}]: ")))?;
        if prepared.analysis.transaction_control {
            return Err(ApiError::BadRequest(format!(
                "statements[{i}]: transaction control (BEGIN, COMMIT, ROLLBACK) is the gateway's; \
                 savepoints are fine"
            )));
        }
        timeout = prepared.statement_timeout_ms;
        checked.push(PipelineStatement {
            sql: prepared.sql,
            params: prepared.params,
            session_effect: prepared.analysis.session_effect,
        });
    }
    Ok(CheckedBatch {
        statements: checked,
        timeout_ms: timeout,
    })
}

/// A script checked on the gateway: see [`check_sql`], then no parameters, no COPY through
/// the client, and no transaction control when the gateway wraps it in a transaction.
pub fn check_script(
    script: &str,
    transaction: bool,
    max_sql_bytes: usize,
) -> Result<Arc<SqlAnalysis>, ApiError> {
    let analysis = check_sql(script, "`script`", max_sql_bytes)?;
    if analysis.statements == 0 {
        return Err(ApiError::BadRequest("`script` is empty".into()));
    }
    if analysis.copies_via_client {
        return Err(ApiError::BadRequest(
            "COPY FROM STDIN / TO STDOUT is not supported over HTTP".into(),
        ));
    }
    if analysis.placeholders > 0 {
        return Err(ApiError::BadRequest(
            "a script takes no parameters ($n); use `statements` for parameters".into(),
        ));
    }
    if transaction && analysis.transaction_control {
        return Err(ApiError::BadRequest(
            "the script controls transactions itself: send it with \"transaction\": false".into(),
        ));
    }
    Ok(analysis)
}

fn prefix(error: ApiError, prefix: &str) -> ApiError {
    match error {
        ApiError::BadRequest(message) => ApiError::BadRequest(format!("{prefix}{message}")),
        other => other,
    }
}

pub async fn handle(
    ctx: &mut RequestContext<'_>,
    tenant: &Tenant,
    body: &[u8],
) -> Result<http::Response<Body>, ApiError> {
    let request: BatchRequest = super::parse_json(body)?;
    let has_modes =
        request.isolation.is_some() || request.read_only.is_some() || request.deferrable.is_some();
    match (&request.statements, &request.script) {
        (Some(statements), None) => {
            if request.transaction.is_some() {
                return Err(ApiError::BadRequest("`transaction` applies to `script` only: statements always run in one transaction".into()));
            }
            let batch = check_statements(statements, request.timeout_ms, Limits::of(ctx, tenant))?;
            for statement in &batch.statements {
                super::end_user::check_sql(tenant, statement.sql)?;
            }
            let begin = super::end_user::begin_for(
                tenant.end_user.as_ref(),
                &begin_sql(request.isolation, request.read_only, request.deferrable),
            );
            let mut conn = ctx.checkout(tenant).await?;
            let mut out = Vec::with_capacity(256);
            let mut writer = request.writer(&mut out, ctx.max_response_bytes);
            batch
                .run(ctx, &mut conn, Some(&begin), tenant, &mut writer)
                .await?;
            Ok(Body::json_bytes(StatusCode::OK, out))
        }
        (None, Some(script)) => {
            let transaction = request.transaction.unwrap_or(true);
            if !transaction && tenant.end_user.is_some() {
                return Err(ApiError::BadRequest(
                    super::end_user::NEEDS_TRANSACTION.into(),
                ));
            }
            if has_modes && !transaction {
                return Err(ApiError::BadRequest(
                    "`isolation`, `readOnly` and `deferrable` need `transaction`".into(),
                ));
            }
            let analysis = check_script(
                script,
                transaction,
                ctx.generation.config.server.max_sql_bytes,
            )?;
            let timeout = match request.timeout_ms {
                Some(0) => return Err(ApiError::BadRequest("`timeoutMs` must be above 0".into())),
                Some(ms) => ms.min(tenant.config.statement_timeout_ms),
                None => tenant.config.statement_timeout_ms,
            };
            let mut conn = ctx.checkout(tenant).await?;
            let executed = Instant::now();
            if analysis.session_effect == SessionEffect::Unresettable {
                // Scripts always get the session reset; this one needs more than a reset.
                conn.retire();
            }
            let result = if transaction {
                let begin = super::end_user::begin_for(
                    tenant.end_user.as_ref(),
                    &begin_sql(request.isolation, request.read_only, request.deferrable),
                );
                conn.script(script, Some(&begin), timeout).await
            } else {
                run_one_by_one(&mut conn, script, &analysis, timeout).await
            };
            ctx.log.exec = Some(executed.elapsed());
            let tags = result.map_err(pipeline_error)?;
            Ok(Body::json_bytes(StatusCode::OK, script_results(&tags)))
        }
        (Some(_), Some(_)) => Err(ApiError::BadRequest(
            "send either `statements` or `script`, not both".into(),
        )),
        (None, None) => Err(ApiError::BadRequest(
            "send `statements` (with parameters) or `script`".into(),
        )),
    }
}

/// A batch's statements after [`check_statements`], and the statement timeout they run under.
pub struct CheckedBatch<'a> {
    pub statements: Vec<PipelineStatement<'a>>,
    pub timeout_ms: u64,
}

impl CheckedBatch<'_> {
    /// Runs the statements as one pipeline (inside `begin` … `COMMIT` when given), writing
    /// `{"results":[…]}` through `writer` — for `/v1/batch`, a transaction's batch and
    /// `POST /sql`'s alike. Times it and counts its rows for the request log.
    pub async fn run(
        &self,
        ctx: &mut RequestContext<'_>,
        conn: &mut PgConnection,
        begin: Option<&str>,
        tenant: &Tenant,
        writer: &mut impl BoundedSink,
    ) -> Result<(), ApiError> {
        let statements = &self.statements;
        let statement_timeout_ms = self.timeout_ms;
        let session_effect = statements
            .iter()
            .map(|s| s.session_effect)
            .max()
            .unwrap_or(SessionEffect::None);
        let options = QueryOptions {
            statement_timeout_ms,
            session_effect,
            types: tenant.pool.types(),
        };
        for statement in statements {
            tracing::debug!(target: "sluice::sql", tenant = %tenant.config.id, sql = statement.sql, "statement");
        }
        let executed = Instant::now();
        writer.out().extend_from_slice(b"{\"results\":[");
        let result = conn.pipeline(statements, begin, &options, writer).await;
        ctx.log.exec = Some(executed.elapsed());
        result.map_err(pipeline_error)?;
        writer.check_size()?;
        ctx.log.rows = writer.total_rows();
        writer.out().extend_from_slice(b"]}");
        Ok(())
    }
}

/// Without a transaction, each statement of the script runs on its own; the first failure
/// stops the script (the statements before it stay done).
async fn run_one_by_one(
    conn: &mut PgConnection,
    script: &str,
    analysis: &SqlAnalysis,
    statement_timeout_ms: u64,
) -> Result<Vec<CommandTag>, PipelineError> {
    let mut tags = Vec::with_capacity(analysis.statement_spans.len());
    for (index, span) in analysis.statement_spans.iter().enumerate() {
        match conn
            .script(&script[span.clone()], None, statement_timeout_ms)
            .await
        {
            Ok(mut done) => tags.append(&mut done),
            Err(error) => {
                return Err(PipelineError {
                    statement_index: Some(index),
                    error: error.error,
                });
            }
        }
    }
    Ok(tags)
}

/// `{"results":[{"command":…,"rowCount":…},…]}`
fn script_results(tags: &[CommandTag]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + tags.len() * 40);
    out.extend_from_slice(b"{\"results\":");
    write_json_array(&mut out, tags, |out, tag| {
        out.push(b'{');
        write_command(out, tag);
        out.push(b'}');
    });
    out.push(b'}');
    out
}

/// A failed statement of a batch keeps its index in the error.
pub fn pipeline_error(failure: PipelineError) -> ApiError {
    match failure.error {
        QueryError::Db(error) => ApiError::Database {
            error,
            statement_index: failure.statement_index,
        },
        QueryError::Rejected(message) => match failure.statement_index {
            Some(i) => ApiError::BadRequest(format!("statements[{i}]: {message}")),
            None => ApiError::BadRequest(message),
        },
        other => ApiError::from(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_carries_isolation_and_access_mode() {
        assert_eq!(begin_sql(None, None, None), "BEGIN");
        assert_eq!(
            begin_sql(Some(Isolation::Serializable), Some(true), Some(true)),
            "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE"
        );
        assert_eq!(
            begin_sql(Some(Isolation::ReadCommitted), Some(false), None),
            "BEGIN ISOLATION LEVEL READ COMMITTED, READ WRITE"
        );
    }
}
