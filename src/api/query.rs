//! `POST /v1/query`: one statement with parameters, its rows encoded straight into the response.

use std::borrow::Cow;
use std::time::Instant;

use http::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::body::Body;
use super::error::ApiError;
use super::results::ResultWriter;
use super::{RequestContext, Tenant};
use crate::config::SessionReset;
use crate::pg::{
    CommandTag, PgConnection, QueryOptions, RowMode, SessionEffect, SqlAnalysis, ValueFormat,
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
    pub analysis: SqlAnalysis,
    pub statement_timeout_ms: u64,
}

impl QueryRequest<'_> {
    /// Rejects what Postgres would reject anyway, without using a connection: empty SQL,
    /// several statements, a parameter count that does not match the placeholders.
    pub fn check(&self, tenant: &Tenant) -> Result<PreparedRequest<'_>, ApiError> {
        check_statement(&self.sql, &self.params, self.timeout_ms, tenant)
    }
}

pub fn check_statement<'a>(
    sql: &'a str,
    params: &'a [&'a RawValue],
    timeout_ms: Option<u64>,
    tenant: &Tenant,
) -> Result<PreparedRequest<'a>, ApiError> {
    let mut analysis = SqlAnalysis::of(sql);
    // `session_reset = "always"`: whatever the lexer concluded, a trigger, view or default
    // may have changed the session, so every statement is followed by the reset (pipelined
    // behind a one-shot statement; at the end of a batch or transaction otherwise).
    if tenant.config.session_reset == SessionReset::Always
        && analysis.session_effect == SessionEffect::None
    {
        analysis.session_effect = SessionEffect::MayChangeSession;
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
    let statement_timeout_ms = match timeout_ms {
        Some(0) => return Err(ApiError::BadRequest("`timeoutMs` must be above 0".into())),
        // Never above the tenant's maximum.
        Some(ms) => ms.min(tenant.config.statement_timeout_ms),
        None => tenant.config.statement_timeout_ms,
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
    let prepared = request.check(tenant)?;
    if super::stream::wants_ndjson(ctx.headers) {
        let waited = Instant::now();
        let conn = tenant.pool.checkout().await?;
        ctx.log.queue_wait = Some(waited.elapsed());
        return super::stream::respond(
            ctx,
            tenant,
            &request,
            &prepared,
            super::stream::Holder::Pool(Box::new(conn)),
        )
        .await;
    }
    let waited = Instant::now();
    let mut conn = tenant.pool.checkout().await?;
    ctx.log.queue_wait = Some(waited.elapsed());
    let executed = Instant::now();
    let mut out = Vec::with_capacity(256);
    out.push(b'{');
    let result = run_into(
        &mut conn,
        &prepared,
        tenant,
        request.row_mode,
        request.types,
        ctx.max_response_bytes,
        &mut out,
    )
    .await;
    ctx.log.exec = Some(executed.elapsed());
    drop(conn);
    let summary = result?;
    ctx.log.rows = summary.rows;
    out.push(b'}');
    Ok(Body::json_bytes(StatusCode::OK, out))
}

/// What one executed statement produced.
pub struct StatementSummary {
    pub tag: CommandTag,
    pub rows: u64,
}

/// Runs one statement on `conn` and writes its result (see [`ResultWriter`]) to `out`.
pub async fn run_into(
    conn: &mut PgConnection,
    request: &PreparedRequest<'_>,
    tenant: &Tenant,
    row_mode: RowMode,
    types: ValueFormat,
    max_bytes: usize,
    out: &mut Vec<u8>,
) -> Result<StatementSummary, ApiError> {
    let options = QueryOptions {
        statement_timeout_ms: request.statement_timeout_ms,
        session_effect: request.analysis.session_effect,
        types: tenant.pool.types(),
    };
    tracing::debug!(target: "sluice::sql", tenant = %tenant.config.id, sql = request.sql, "statement");
    let mut rows = conn.query(request.sql, request.params, &options).await?;
    let mut writer = ResultWriter::new(out, row_mode, types, max_bytes);
    writer.begin(&rows.statement());
    while let Some(row) = rows.next().await? {
        writer.row(&row).map_err(|e| ApiError::ConnectionLost {
            reason: format!("malformed row from the server: {e}"),
        })?;
    }
    let tag = rows.finish().await?;
    writer.check_size()?;
    writer.end(&tag);
    Ok(StatementSummary {
        rows: writer.total_rows,
        tag,
    })
}
