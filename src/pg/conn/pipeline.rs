//! Several statements in one round trip: `pipeline` (extended protocol, one Sync, optionally
//! inside a transaction) and `script` (a multi-statement text over the simple protocol), with
//! the types a caller uses to receive their results and failures.

use super::PgConnection;
use super::QueryOptions;
use super::lost;
use crate::pg::error::DbError;
use crate::pg::error::QueryError;
use crate::pg::sql::SessionEffect;
use crate::pg::statement::CommandTag;
use crate::pg::statement::Statement;
use postgres_protocol::message::backend::DataRowBody;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use serde_json::value::RawValue;
use std::io;
use std::sync::Arc;

/// One statement of a pipeline.
pub struct PipelineStatement<'a> {
    pub sql: &'a str,
    pub params: &'a [&'a RawValue],
    pub session_effect: SessionEffect,
}

/// Receives a pipeline's results as they arrive.
pub trait ResultSink {
    /// Statement `index` produced its first message; its rows follow.
    fn begin_statement(&mut self, index: usize, statement: &Arc<Statement>);
    fn row(&mut self, row: &DataRowBody) -> io::Result<()>;
    fn end_statement(&mut self, tag: &CommandTag);
}

/// A pipeline that failed: which statement (none when COMMIT failed), and why.
#[derive(Debug)]
pub struct PipelineError {
    pub statement_index: Option<usize>,
    pub error: QueryError,
}

/// `map_err` for a pipeline's failures: the error happened at statement `index` (`None`:
/// outside any one statement, such as the flush or `COMMIT`).
fn failed_at(index: Option<usize>) -> impl Fn(QueryError) -> PipelineError {
    move |error| PipelineError {
        statement_index: index,
        error,
    }
}

impl PgConnection {
    /// Runs `statements` in one pipeline: their Bind/Execute messages and a single Sync —
    /// wrapped in `begin` … `COMMIT` when `begin` is given (a `/v1/batch`), bare inside an
    /// interactive transaction. Statements not yet prepared cost one more round trip first.
    /// Results reach `sink` as they arrive. On failure the error names the statement
    /// (`None` when COMMIT itself failed), and a wrapped transaction is over either way.
    pub async fn pipeline(
        &mut self,
        statements: &[PipelineStatement<'_>],
        begin: Option<&str>,
        options: &QueryOptions<'_>,
        sink: &mut impl ResultSink,
    ) -> Result<Option<CommandTag>, PipelineError> {
        self.ensure_in_sync().map_err(failed_at(None))?;
        self.statements.protect();
        let result = self
            .pipeline_protected(statements, begin, options, sink)
            .await;
        self.statements.unprotect();
        result
    }

    pub(super) async fn pipeline_protected(
        &mut self,
        statements: &[PipelineStatement<'_>],
        begin: Option<&str>,
        options: &QueryOptions<'_>,
        sink: &mut impl ResultSink,
    ) -> Result<Option<CommandTag>, PipelineError> {
        let at = |index: usize| failed_at(Some(index));
        // Prepare what the cache lacks, all at once.
        let mut prepared: Vec<Option<Arc<Statement>>> = statements
            .iter()
            .map(|s| self.statements.get(s.sql))
            .collect();
        let mut missing: Vec<&str> = statements
            .iter()
            .zip(&prepared)
            .filter(|(_, p)| p.is_none())
            .map(|(s, _)| s.sql)
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            // Boxed: cache misses are rare on a warm connection, and the Parse/Describe
            // round's state would otherwise be carried by every batch's future.
            let fresh = Box::pin(self.prepare_many(&missing, options))
                .await
                .map_err(|(i, error)| {
                    let index = statements
                        .iter()
                        .position(|s| s.sql == missing[i.min(missing.len() - 1)]);
                    failed_at(index)(error)
                })?;
            for (slot, statement) in prepared.iter_mut().zip(statements) {
                if slot.is_none() {
                    *slot = missing
                        .iter()
                        .position(|sql| *sql == statement.sql)
                        .map(|i| fresh[i].clone());
                }
            }
        }
        let prepared: Vec<Arc<Statement>> = prepared
            .into_iter()
            .map(|p| p.expect("every statement is prepared"))
            .collect();

        // Everything encoded before anything is queued, so a parameter error sends nothing.
        let mut binds = Vec::with_capacity(statements.len());
        for (index, (statement, request)) in prepared.iter().zip(statements).enumerate() {
            if statement.params.len() != request.params.len() {
                return Err(at(index)(QueryError::Rejected(format!(
                    "the statement has {} parameter placeholder(s) but {} parameter(s) were given",
                    statement.params.len(),
                    request.params.len()
                ))));
            }
            binds.push(
                self.encode_bind(statement, request.params)
                    .map_err(at(index))?,
            );
        }
        let checkpoint = self.checkpoint();
        let set_timeout = self.queue_statement_timeout(options.statement_timeout_ms);
        if let Some(begin) = begin {
            frontend::query(begin, &mut self.write_buf)
                .map_err(|e| at(0)(self.rewind(checkpoint, e)))?;
            self.pending_syncs += 1;
        }
        for bind in binds {
            self.write_buf.unsplit(bind);
            frontend::execute("", 0, &mut self.write_buf)
                .map_err(|e| at(0)(self.rewind(checkpoint, e)))?;
        }
        frontend::sync(&mut self.write_buf);
        self.pending_syncs += 1;
        if begin.is_some() {
            // On a failed transaction COMMIT rolls back and answers "ROLLBACK": no extra round
            // trip either way.
            frontend::query("COMMIT", &mut self.write_buf)
                .map_err(|e| at(0)(self.rewind(checkpoint, e)))?;
            self.pending_syncs += 1;
        }
        let effect = statements
            .iter()
            .map(|s| s.session_effect)
            .max()
            .unwrap_or(SessionEffect::None)
            .max(options.session_effect);
        if effect != SessionEffect::None {
            self.session_dirty = true;
        }
        if effect == SessionEffect::Unresettable {
            self.retire = true;
        }
        self.flush().await.map_err(|e| at(0)(lost(e)))?;

        if set_timeout {
            self.expect_command_ok().await.map_err(at(0))?;
        }
        let mut failure: Option<PipelineError> = None;
        if begin.is_some()
            && let Some(error) = self.expect_begin().await.map_err(at(0))?
        {
            // The statements behind it fail in the aborted transaction and COMMIT rolls it
            // back: read on, and answer with the begin's error (it is no statement's).
            failure = Some(PipelineError {
                statement_index: None,
                error: QueryError::db(error),
            });
        }
        let mut index = 0;
        let mut started = false;
        loop {
            let message = self.recv().await.map_err(|e| at(index)(lost(e)))?;
            match message {
                Message::BindComplete => {
                    sink.begin_statement(index, &prepared[index]);
                    started = true;
                }
                Message::DataRow(row) if started => sink.row(&row).map_err(|e| {
                    self.broken = true;
                    at(index)(QueryError::ConnectionLost(format!(
                        "malformed row from the server: {e}"
                    )))
                })?,
                Message::CommandComplete(body) if started => {
                    let tag = CommandTag::parse(body.tag().map_err(|e| at(index)(lost(e)))?);
                    sink.end_statement(&tag);
                    started = false;
                    index += 1;
                }
                Message::EmptyQueryResponse if started => {
                    sink.end_statement(&CommandTag::default());
                    started = false;
                    index += 1;
                }
                Message::ErrorResponse(body) => {
                    let error = DbError::parse(body.fields()).map_err(|e| at(index)(lost(e)))?;
                    // A Bind that found the gateway's statement gone: the batch fails, and the
                    // cache is emptied so the next request prepares afresh.
                    if !started {
                        self.lost_gateway_statement(&error);
                    }
                    // The first error is the cause; later ones follow from it.
                    if failure.is_none() {
                        failure = Some(at(index)(QueryError::db(error)));
                    }
                }
                Message::CopyInResponse(_) => {
                    self.refuse_copy_in().await.map_err(at(index))?;
                    frontend::sync(&mut self.write_buf);
                    self.flush().await.map_err(|e| at(index)(lost(e)))?;
                }
                Message::CopyOutResponse(_) | Message::CopyData(_) | Message::CopyDone => {}
                Message::ReadyForQuery(_) => break,
                other => return Err(at(index)(self.desync(&other))),
            }
        }
        let mut commit_tag = None;
        if begin.is_some() {
            let mut commit_error = None;
            loop {
                match self.recv().await.map_err(|e| at(index)(lost(e)))? {
                    Message::CommandComplete(body) => {
                        commit_tag = Some(CommandTag::parse(
                            body.tag().map_err(|e| at(index)(lost(e)))?,
                        ));
                    }
                    Message::ErrorResponse(body) => {
                        commit_error =
                            Some(DbError::parse(body.fields()).map_err(|e| at(index)(lost(e)))?);
                    }
                    Message::ReadyForQuery(_) => break,
                    other => return Err(at(index)(self.desync(&other))),
                }
            }
            if failure.is_none()
                && let Some(error) = commit_error
            {
                failure = Some(PipelineError {
                    statement_index: None,
                    error: QueryError::db(error),
                });
            }
        }
        match failure {
            Some(failure) => Err(failure),
            None => Ok(commit_tag),
        }
    }

    /// Runs a multi-statement script with the simple query protocol (no parameters), inside
    /// `begin` … `COMMIT` when `begin` is given, and returns each statement's command tag.
    /// A failure names the statement by its position in the script.
    pub async fn script(
        &mut self,
        script: &str,
        begin: Option<&str>,
        statement_timeout_ms: u64,
    ) -> Result<Vec<CommandTag>, PipelineError> {
        self.ensure_in_sync().map_err(failed_at(None))?;
        let checkpoint = self.checkpoint();
        let set_timeout = self.queue_statement_timeout(statement_timeout_ms);
        for sql in [begin, Some(script), begin.map(|_| "COMMIT")]
            .into_iter()
            .flatten()
        {
            frontend::query(sql, &mut self.write_buf)
                .map_err(|e| failed_at(None)(self.rewind(checkpoint, e)))?;
            self.pending_syncs += 1;
        }
        // Scripts are for DDL and migrations: reset the session before the connection is reused.
        self.session_dirty = true;
        self.flush().await.map_err(|e| failed_at(None)(lost(e)))?;
        if set_timeout {
            self.expect_command_ok().await.map_err(failed_at(None))?;
        }
        let mut tags = Vec::new();
        let mut failure = None;
        if begin.is_some()
            && let Some(error) = self.expect_begin().await.map_err(failed_at(None))?
        {
            // As in `pipeline`: the script fails in the aborted transaction, COMMIT rolls back.
            failure = Some(failed_at(None)(QueryError::db(error)));
        }
        loop {
            match self
                .recv()
                .await
                .map_err(|e| failed_at(Some(tags.len()))(lost(e)))?
            {
                Message::CommandComplete(body) => {
                    tags.push(CommandTag::parse(
                        body.tag()
                            .map_err(|e| failed_at(Some(tags.len()))(lost(e)))?,
                    ));
                }
                Message::EmptyQueryResponse | Message::RowDescription(_) | Message::DataRow(_) => {}
                Message::CopyInResponse(_) => self
                    .refuse_copy_in()
                    .await
                    .map_err(failed_at(Some(tags.len())))?,
                Message::CopyOutResponse(_) | Message::CopyData(_) | Message::CopyDone => {}
                Message::ErrorResponse(body) => {
                    let error = DbError::parse(body.fields())
                        .map_err(|e| failed_at(Some(tags.len()))(lost(e)))?;
                    if failure.is_none() {
                        failure = Some(failed_at(Some(tags.len()))(QueryError::db(error)));
                    }
                }
                Message::ReadyForQuery(_) => break,
                other => return Err(failed_at(Some(tags.len()))(self.desync(&other))),
            }
        }
        if begin.is_some() {
            let mut commit_error = None;
            loop {
                match self.recv().await.map_err(|e| failed_at(None)(lost(e)))? {
                    Message::ErrorResponse(body) => {
                        commit_error = Some(
                            DbError::parse(body.fields()).map_err(|e| failed_at(None)(lost(e)))?,
                        )
                    }
                    Message::ReadyForQuery(_) => break,
                    _ => {}
                }
            }
            if failure.is_none()
                && let Some(error) = commit_error
            {
                failure = Some(failed_at(None)(QueryError::db(error)));
            }
        }
        match failure {
            Some(failure) => Err(failure),
            None => Ok(tags),
        }
    }
}
