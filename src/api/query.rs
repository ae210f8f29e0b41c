//! `POST /v1/query`: one statement with parameters, its rows encoded straight into the response.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use http::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::body::Body;
use super::error::ApiError;
use super::results::{BoundedSink, ResultWriter};
use super::{RequestContext, Tenant};
use crate::config::SessionReset;
use crate::pg::sql::{MAX_COMMENT_DEPTH, MAX_PAREN_DEPTH};
use crate::pg::{
    PgConnection, QueryOptions, RowMode, SessionEffect, SqlAnalysis, ValueFormat, params,
};

/// The body of `/v1/query` (and of `/v1/transactions/{id}/query`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QueryRequest<'a> {
    #[serde(borrow)]
    pub sql: Cow<'a, str>,
    #[serde(borrow, default)]
    pub params: Vec<&'a RawValue>,
    #[serde(default)]
    pub row_mode: RowMode,
    #[serde(default)]
    pub types: ValueFormat,
    pub timeout_ms: Option<u64>,
}

/// A statement checked on the gateway before it goes near a connection.
pub struct PreparedRequest<'a> {
    pub sql: &'a str,
    pub params: &'a [&'a RawValue],
    pub analysis: Arc<SqlAnalysis>,
    pub statement_timeout_ms: u64,
}

impl PreparedRequest<'_> {
    /// How to run the statement on `tenant`'s pool; logs it (at debug) as it is about to run.
    fn options<'t>(&self, tenant: &'t Tenant) -> QueryOptions<'t> {
        tracing::debug!(target: "sluice::sql", tenant = %tenant.config.id, sql = self.sql, "statement");
        QueryOptions {
            statement_timeout_ms: self.statement_timeout_ms,
            session_effect: self.analysis.session_effect,
            types: tenant.pool.types(),
        }
    }
}

/// What bounds the statements of one request: the server's and the tenant's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_sql_bytes: usize,
    /// The tenant's statement timeout, which a request may lower but not raise.
    pub statement_timeout_ms: u64,
    pub session_reset: SessionReset,
}

impl Limits {
    pub fn of(ctx: &RequestContext<'_>, tenant: &Tenant) -> Limits {
        Limits {
            max_sql_bytes: ctx.generation.config.server.max_sql_bytes,
            statement_timeout_ms: tenant.config.statement_timeout_ms,
            session_reset: tenant.config.session_reset,
        }
    }
}

impl QueryRequest<'_> {
    /// The checked statement, owned, for an NDJSON stream (which outlives the request body).
    pub(crate) fn owned(&self, prepared: &PreparedRequest<'_>) -> super::stream::OwnedRequest {
        super::stream::OwnedRequest {
            begin: None,
            sql: prepared.sql.to_owned(),
            params: prepared.params.iter().map(|p| (*p).to_owned()).collect(),
            statement_timeout_ms: prepared.statement_timeout_ms,
            session_effect: prepared.analysis.session_effect,
            row_mode: self.row_mode,
            types: self.types,
        }
    }

    /// The writer of this request's result (its `rowMode` and `types`) into `out`.
    pub(crate) fn writer<'o>(&self, out: &'o mut Vec<u8>, max_bytes: usize) -> ResultWriter<'o> {
        ResultWriter::new(out, self.row_mode, self.types, max_bytes)
    }

    /// Rejects what Postgres would reject anyway, without using a connection: empty SQL,
    /// several statements, a parameter count that does not match the placeholders.
    pub fn check(&self, limits: Limits) -> Result<PreparedRequest<'_>, ApiError> {
        check_statement(&self.sql, &self.params, self.timeout_ms, limits)
    }
}

/// What every route refuses in SQL text (`what` names it in the message), before it goes near
/// a connection: text over `max_sql_bytes`; a NUL character (Postgres's messages end strings
/// with one, so it cannot be sent); nesting deeper than [`MAX_COMMENT_DEPTH`] or
/// [`MAX_PAREN_DEPTH`]; and statements that would break the gateway's prepared statements.
/// Returns the text's analysis.
pub fn check_sql(
    sql: &str,
    what: &str,
    max_sql_bytes: usize,
) -> Result<Arc<SqlAnalysis>, ApiError> {
    if sql.len() > max_sql_bytes {
        return Err(ApiError::BadRequest(format!(
            "{what} is {} bytes; the limit is {max_sql_bytes} (server.max_sql_bytes)",
            sql.len()
        )));
    }
    if sql.contains('\0') {
        return Err(ApiError::BadRequest(format!(
            "{what} contains a NUL character (\\u0000), which Postgres cannot receive"
        )));
    }
    let analysis = crate::pg::sql::analysis_of(sql);
    if analysis.comment_depth > MAX_COMMENT_DEPTH {
        return Err(ApiError::BadRequest(format!(
            "{what} nests block comments {} deep; the limit is {MAX_COMMENT_DEPTH}",
            analysis.comment_depth
        )));
    }
    if analysis.paren_depth > MAX_PAREN_DEPTH {
        return Err(ApiError::BadRequest(format!(
            "{what} nests parentheses {} deep; the limit is {MAX_PAREN_DEPTH}",
            analysis.paren_depth
        )));
    }
    if let Some(reason) = analysis.statement_cache_conflict {
        return Err(ApiError::BadRequest(format!("{what}: {reason}")));
    }
    Ok(analysis)
}

pub fn check_statement<'a>(
    sql: &'a str,
    params: &'a [&'a RawValue],
    timeout_ms: Option<u64>,
    limits: Limits,
) -> Result<PreparedRequest<'a>, ApiError> {
    let mut analysis = check_sql(sql, "`sql`", limits.max_sql_bytes)?;
    // `session_reset = "always"`: whatever the lexer concluded, a trigger, view or default
    // may have changed the session, so every statement is followed by the reset (pipelined
    // behind a one-shot statement; at the end of a batch or transaction otherwise).
    if limits.session_reset == SessionReset::Always
        && analysis.session_effect == SessionEffect::None
    {
        Arc::make_mut(&mut analysis).session_effect = SessionEffect::MayChangeSession;
    }
    match analysis.statements {
        0 => return Err(ApiError::BadRequest("`sql` is empty".into())),
        1 => {}
        n => {
            return Err(ApiError::BadRequest(format!(
                "`sql` holds {n} statements; /v1/query runs one — send several to /v1/batch"
            )));
        }
    }
    if analysis.copies_via_client {
        return Err(ApiError::BadRequest(
            "COPY FROM STDIN / TO STDOUT is not supported over HTTP: use INSERT with parameters, \
             or SELECT (with NDJSON streaming for large results)"
                .into(),
        ));
    }
    if analysis.placeholders != params.len() {
        return Err(ApiError::BadRequest(format!(
            "the statement uses {} parameter(s) ($1..${}) but `params` has {}",
            analysis.placeholders,
            analysis.placeholders,
            params.len()
        )));
    }
    for (i, param) in params.iter().enumerate() {
        params::check(param)
            .map_err(|reason| ApiError::BadRequest(format!("parameter ${}: {reason}", i + 1)))?;
    }
    let statement_timeout_ms = match timeout_ms {
        Some(0) => return Err(ApiError::BadRequest("`timeoutMs` must be above 0".into())),
        // Never above the tenant's maximum.
        Some(ms) => ms.min(limits.statement_timeout_ms),
        None => limits.statement_timeout_ms,
    };
    Ok(PreparedRequest {
        sql,
        params,
        analysis,
        statement_timeout_ms,
    })
}

pub async fn handle(
    ctx: &mut RequestContext<'_>,
    tenant: &Tenant,
    body: &[u8],
) -> Result<http::Response<Body>, ApiError> {
    let request: QueryRequest = super::parse_json(body)?;
    let prepared = request.check(Limits::of(ctx, tenant))?;
    if let Some(identity) = &tenant.end_user {
        super::end_user::check_sql(tenant, prepared.sql)?;
        let begin = identity.begin_sql("BEGIN");
        if super::stream::wants_ndjson(ctx.headers) {
            let conn = ctx.checkout(tenant).await?;
            let mut owned = request.owned(&prepared);
            owned.begin = Some(begin);
            let holder = super::stream::Holder::Pool(Box::new(conn));
            return super::stream::respond(ctx, tenant, owned, holder).await;
        }
        // Boxed: its transaction's state would otherwise weigh on every API-key query's
        // future; an end user's request (BEGIN, role and claims around the statement) pays
        // one allocation.
        return Box::pin(run_as_end_user(ctx, tenant, &request, &prepared, &begin)).await;
    }
    if super::stream::wants_ndjson(ctx.headers) {
        let conn = ctx.checkout(tenant).await?;
        let holder = super::stream::Holder::Pool(Box::new(conn));
        return super::stream::respond(ctx, tenant, request.owned(&prepared), holder).await;
    }
    let mut conn = ctx.checkout(tenant).await?;
    let mut out = Vec::with_capacity(256);
    let mut writer = request.writer(&mut out, ctx.max_response_bytes);
    let result = run_one(ctx, &mut conn, &prepared, tenant, &mut writer).await;
    drop(conn);
    result?;
    Ok(Body::json_bytes(StatusCode::OK, out))
}

/// Runs one statement on `conn` (checked out, or a transaction's) and writes its result
/// through `writer` — for `/v1/query`, a transaction's query and `POST /sql` alike. Times it
/// and counts its rows for the request log.
pub(crate) async fn run_one(
    ctx: &mut RequestContext<'_>,
    conn: &mut PgConnection,
    prepared: &PreparedRequest<'_>,
    tenant: &Tenant,
    writer: &mut impl BoundedSink,
) -> Result<(), ApiError> {
    let executed = Instant::now();
    let options = prepared.options(tenant);
    let result = async {
        let mut rows = conn.query(prepared.sql, prepared.params, &options).await?;
        writer.begin_statement(0, &rows.statement());
        while let Some(row) = rows.next().await? {
            writer.row(&row).map_err(|e| ApiError::ConnectionLost {
                reason: format!("malformed row from the server: {e}"),
            })?;
        }
        let tag = rows.finish().await?;
        writer.check_size()?;
        writer.end_statement(&tag);
        Ok::<_, ApiError>(())
    }
    .await;
    ctx.log.exec = Some(executed.elapsed());
    result?;
    ctx.log.rows = writer.total_rows();
    Ok(())
}

/// An end user's statement on `/v1/query`, its result written as a lone statement's.
async fn run_as_end_user(
    ctx: &mut RequestContext<'_>,
    tenant: &Tenant,
    request: &QueryRequest<'_>,
    prepared: &PreparedRequest<'_>,
    begin: &str,
) -> Result<http::Response<Body>, ApiError> {
    let mut out = Vec::with_capacity(256);
    let mut writer = request.writer(&mut out, ctx.max_response_bytes);
    pipeline_as_end_user(ctx, tenant, prepared, begin, &mut writer).await?;
    Ok(Body::json_bytes(StatusCode::OK, out))
}

/// An end user's statement: pipelined behind `begin` (`BEGIN`, the role and the claims) and
/// followed by `COMMIT`, all in one round trip, its result written by `writer` — for
/// `/v1/query` and `POST /sql` alike. Times it and counts its rows for the request log.
pub(crate) async fn pipeline_as_end_user(
    ctx: &mut RequestContext<'_>,
    tenant: &Tenant,
    prepared: &PreparedRequest<'_>,
    begin: &str,
    writer: &mut impl BoundedSink,
) -> Result<(), ApiError> {
    let statement = [crate::pg::PipelineStatement {
        sql: prepared.sql,
        params: prepared.params,
        session_effect: prepared.analysis.session_effect,
    }];
    let options = prepared.options(tenant);
    let mut conn = ctx.checkout(tenant).await?;
    let executed = Instant::now();
    let result = conn
        .pipeline(&statement, Some(begin), &options, writer)
        .await;
    ctx.log.exec = Some(executed.elapsed());
    drop(conn);
    // One statement: its error is the request's, with no index to name.
    result.map_err(|failure| ApiError::from(failure.error))?;
    writer.check_size()?;
    ctx.log.rows = writer.total_rows();
    Ok(())
}
