//! NDJSON streaming of large results (`Accept: application/x-ndjson` on `/v1/query` and
//! `/v1/transactions/{id}/query`), without `max_response_bytes`: a first line
//! `{"fields":[…]}`, one line per row, and a last line `{"command":…,"rowCount":…}` — or
//! `{"error":{…}}` when the statement fails part way (the status is 200 by then, so clients must
//! read the last line).
//!
//! A task owns the connection and reads rows as Postgres sends them into a small bounded
//! channel that feeds the response body: a client that reads slowly makes the task wait, the
//! task stops reading from Postgres, and the statement pauses — memory stays flat whatever the
//! result size. A client that goes away drops the channel; the task stops, and dropping the
//! connection mid-statement cancels it (see `PgConnection::recover`). A client that stays but
//! stops reading is treated the same once it has not taken a chunk for
//! `stream_stall_timeout_ms`, and so is every stream still running at a drain's deadline.
//!
//! An end user's stream runs in a gateway-owned transaction: the `BEGIN` with the role and
//! claims first (its own round trip), then the statement, then `COMMIT` before the last line.
//! A stream that stops early leaves the transaction open; the pool's recovery rolls it back,
//! and the role and claims (transaction-local) with it.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use serde_json::value::RawValue;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::body::Body;
use super::error::ApiError;
use super::{RequestContext, Tenant};
use crate::pg::{PgConnection, QueryOptions, RowEncoder, RowMode, SessionEffect, ValueFormat};
use crate::pool::{Checkout, TenantPool};
use crate::transactions::TransactionCall;

/// Rows are sent in chunks of about this size, or sooner when Postgres pauses.
const CHUNK_BYTES: usize = 32 * 1024;
/// Chunks in flight between the database task and the client.
const CHANNEL_CHUNKS: usize = 4;

/// Whether the client asked for a stream.
pub fn wants_ndjson(headers: &super::head::Headers) -> bool {
    headers
        .get_all(&http::header::ACCEPT)
        .filter_map(|v| std::str::from_utf8(v).ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().starts_with("application/x-ndjson"))
        })
}

/// Where the streaming task's connection comes from: the pool, or an open transaction.
pub enum Holder {
    Pool(Box<Checkout>),
    Transaction(TransactionCall),
}

impl Holder {
    fn conn(&mut self) -> &mut PgConnection {
        match self {
            Holder::Pool(checkout) => checkout,
            Holder::Transaction(call) => call.conn(),
        }
    }

    /// A transaction's expiry explains the error of a statement it cut short.
    fn error(&self, error: ApiError) -> ApiError {
        match self {
            Holder::Pool(_) => error,
            Holder::Transaction(call) => ApiError::after_call(call, error),
        }
    }
}

/// A checked request, owned so the task can outlive the request body (made by
/// `QueryRequest::owned`).
pub struct OwnedRequest {
    pub sql: String,
    pub params: Vec<Box<RawValue>>,
    pub statement_timeout_ms: u64,
    pub session_effect: SessionEffect,
    pub row_mode: RowMode,
    pub types: ValueFormat,
    /// An end user's `BEGIN` (role and claims): the statement runs inside, then `COMMIT`.
    pub begin: Option<String>,
}

/// When the task gives up on its client.
struct Give {
    /// Longest wait for the client to take a chunk.
    stall: Duration,
    /// The drain's deadline passed.
    stop: CancellationToken,
}

/// Starts the statement on `holder` and answers with its stream — or, if it fails before its
/// first row, with an ordinary error response.
pub async fn respond(
    ctx: &RequestContext<'_>,
    tenant: &Tenant,
    request: OwnedRequest,
    holder: Holder,
) -> Result<Response<Body>, ApiError> {
    let (head_tx, head_rx) = oneshot::channel();
    let (body_tx, body_rx) = mpsc::channel(CHANNEL_CHUNKS);
    let give = Give {
        stall: ctx.generation.config.server.stream_stall_timeout,
        stop: ctx.app.deadline_passed().clone(),
    };
    ctx.app.spawn(stream(
        holder,
        tenant.pool.clone(),
        request,
        head_tx,
        body_tx,
        give,
    ));
    let head = head_rx.await.map_err(|_| ApiError::Internal {
        reason: "the stream ended before its first line".into(),
    })??;
    let mut response = Response::new(Body::Stream {
        head: Some(head),
        rest: body_rx,
    });
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    // Reverse proxies (nginx) would otherwise buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

async fn stream(
    mut holder: Holder,
    pool: TenantPool,
    request: OwnedRequest,
    head: oneshot::Sender<Result<Bytes, ApiError>>,
    body: mpsc::Sender<Bytes>,
    give: Give,
) {
    let params: Vec<&RawValue> = request.params.iter().map(|p| &**p).collect();
    let options = QueryOptions {
        statement_timeout_ms: request.statement_timeout_ms,
        session_effect: request.session_effect,
        types: pool.types(),
    };
    if let Some(begin) = &request.begin
        && let Err(error) = holder.conn().simple_query(begin).await
    {
        // A role the login role cannot take, say: Postgres's error, before any line. The
        // failed transaction is rolled back when the connection goes back to the pool.
        let _ = head.send(Err(error.into()));
        return;
    }
    let mut rows = match holder.conn().query(&request.sql, &params, &options).await {
        Ok(rows) => rows,
        Err(error) => {
            let _ = head.send(Err(holder.error(error.into())));
            return;
        }
    };
    let statement = rows.statement();
    let mut line = b"{\"fields\":".to_vec();
    RowEncoder::write_fields(&statement.fields, &mut line);
    line.extend_from_slice(b"}\n");
    if head.send(Ok(line.into())).is_err() {
        // The client left before the first line: dropping `rows` and the connection cancels.
        return;
    }
    let mut encoder = RowEncoder::new(request.row_mode, request.types);
    let mut chunk = Vec::with_capacity(CHUNK_BYTES + 4096);
    let result = loop {
        match rows.next().await {
            Ok(Some(row)) => {
                if let Err(error) = encoder.write_row(&mut chunk, &statement.fields, &row) {
                    break Err(ApiError::ConnectionLost {
                        reason: format!("malformed row from the server: {error}"),
                    });
                }
                chunk.push(b'\n');
                if (chunk.len() >= CHUNK_BYTES || !rows.next_is_buffered())
                    && !send(&body, &mut chunk, &give).await
                {
                    return;
                }
            }
            Ok(None) => {
                let finished = rows.finish().await.map_err(ApiError::from);
                break match (finished, &request.begin) {
                    (Ok(tag), Some(_)) => commit(holder.conn()).await.map(|()| tag),
                    (finished, _) => finished,
                };
            }
            Err(error) => break Err(error.into()),
        }
    };
    match result.map_err(|error| holder.error(error)) {
        Ok(tag) => {
            chunk.push(b'{');
            super::results::write_command(&mut chunk, &tag);
            chunk.extend_from_slice(b"}\n");
        }
        Err(error) => {
            serde_json::to_writer(&mut chunk, &error.to_json()).expect("JSON to a Vec");
            chunk.push(b'\n');
        }
    }
    send(&body, &mut chunk, &give).await;
}

/// Ends an end user's stream's transaction. `COMMIT` of a transaction that failed answers
/// `ROLLBACK` without an error: that is a failure too.
async fn commit(conn: &mut PgConnection) -> Result<(), ApiError> {
    let tags = conn.simple_query("COMMIT").await?;
    match tags.first() {
        Some(tag) if tag.command == "COMMIT" => Ok(()),
        _ => Err(ApiError::Internal {
            reason: "the end user's transaction did not commit".into(),
        }),
    }
}

/// Sends the chunk (waiting while the client is slow); false when the client is gone, has
/// not taken a chunk within the stall timeout, or the drain's deadline passed.
async fn send(body: &mpsc::Sender<Bytes>, chunk: &mut Vec<u8>, give: &Give) -> bool {
    if chunk.is_empty() {
        return true;
    }
    let bytes = Bytes::from(std::mem::replace(
        chunk,
        Vec::with_capacity(CHUNK_BYTES + 4096),
    ));
    tokio::select! {
        sent = tokio::time::timeout(give.stall, body.send(bytes)) => matches!(sent, Ok(Ok(()))),
        () = give.stop.cancelled() => false,
    }
}
