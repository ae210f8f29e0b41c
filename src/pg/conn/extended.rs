//! The extended query protocol: one statement with parameters (`query`), Parse/Describe
//! through the statement cache (`prepare`, `prepare_many`), Bind encoding, and the gateway's
//! own simple-protocol lookups (`simple_query`, `fetch_text`, type learning).

use super::PgConnection;
use super::QueryOptions;
use super::TxStatus;
use super::lost;
use super::rows::Rows;
use crate::pg::error::DbError;
use crate::pg::error::QueryError;
use crate::pg::params;
use crate::pg::sql::GATEWAY_STATEMENT_PREFIX;
use crate::pg::sql::SessionEffect;
use crate::pg::statement::ColumnSource;
use crate::pg::statement::CommandTag;
use crate::pg::statement::Field;
use crate::pg::statement::Statement;
use crate::pg::types::PgType;
use crate::pg::types::TYPE_LOOKUP_SQL;
use crate::pg::types::TypeRegistry;
use crate::pg::types::TypeRow;
use bytes::BufMut;
use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::IsNull;
use postgres_protocol::message::backend::DataRowBody;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use serde_json::value::RawValue;
use std::io;
use std::sync::Arc;

/// A statement as Describe reports it: parameter type OIDs, and result columns (name, OID,
/// where the column comes from).
pub(super) type Description = (Vec<u32>, Vec<(String, u32, ColumnSource)>);

impl PgConnection {
    /// Runs one statement with parameters and returns its rows as a stream.
    pub async fn query<'c>(
        &'c mut self,
        sql: &str,
        params: &[&RawValue],
        options: &QueryOptions<'_>,
    ) -> Result<Rows<'c>, QueryError> {
        self.ensure_in_sync()?;
        let mut retried = false;
        let mut recovered_cache = false;
        loop {
            let statement = match self.statements.get(sql) {
                Some(statement) => statement,
                // Boxed: a cache miss is rare on a warm connection, and the Parse/Describe
                // round's state would otherwise be carried by every query's future.
                None => Box::pin(self.prepare(sql, options)).await?,
            };
            if statement.params.len() != params.len() {
                return Err(QueryError::Rejected(format!(
                    "the statement has {} parameter placeholder(s) but {} parameter(s) were given",
                    statement.params.len(),
                    params.len()
                )));
            }
            // Encoded before anything is queued, so a parameter error leaves nothing half-sent.
            let bind = self.encode_bind(&statement, params)?;
            let checkpoint = self.checkpoint();
            let set_timeout = self.queue_statement_timeout(options.statement_timeout_ms);
            self.write_buf.unsplit(bind);
            frontend::execute("", 0, &mut self.write_buf)
                .map_err(|e| self.rewind(checkpoint, e))?;
            frontend::sync(&mut self.write_buf);
            self.pending_syncs += 1;
            if options.session_effect == SessionEffect::Unresettable {
                self.retire = true;
            }
            // Inside a transaction the reset waits for its end (it would become part of it).
            let may_change = options.session_effect != SessionEffect::None;
            let reset = may_change && self.tx_status == TxStatus::Idle;
            if reset {
                self.queue_session_reset();
            } else if may_change {
                self.session_dirty = true;
            }
            self.flush().await.map_err(lost)?;
            if set_timeout {
                // Boxed, as the error path below: rare, and not to be carried by every query.
                Box::pin(self.expect_command_ok()).await?;
            }
            match self.recv().await.map_err(lost)? {
                Message::BindComplete => {
                    return Ok(Rows {
                        conn: self,
                        statement,
                        reset_pending: reset,
                        done: None,
                        copy_out: false,
                    });
                }
                Message::ErrorResponse(body) => {
                    // Boxed, the error and the path's state: both would otherwise be carried
                    // (and moved) by every query's future.
                    let error = Box::new(DbError::parse(body.fields()).map_err(lost)?);
                    Box::pin(self.after_error(reset)).await?;
                    // A table altered under a cached statement: nothing ran, so prepare the
                    // statement afresh once.
                    if !retried && error.code == "0A000" && error.message.contains("cached plan") {
                        retried = true;
                        self.statements.remove(sql);
                        self.queue_close(&statement.name);
                        continue;
                    }
                    // The gateway's statement is gone (DEALLOCATE ALL or DISCARD ALL hidden in
                    // a function): the cache no longer matches the server. Nothing ran, so
                    // outside a transaction (which the error has failed) start over with an
                    // empty cache, once.
                    if self.lost_gateway_statement(&error)
                        && !recovered_cache
                        && self.tx_status == TxStatus::Idle
                    {
                        recovered_cache = true;
                        continue;
                    }
                    return Err(QueryError::Db(error));
                }
                other => return Err(self.desync(&other)),
            }
        }
    }

    /// What follows a statement's ErrorResponse: its ReadyForQuery, then the answers to the
    /// session reset queued behind it (`reset`).
    async fn after_error(&mut self, reset: bool) -> Result<(), QueryError> {
        self.expect_ready().await.map_err(lost)?;
        if reset {
            self.expect_session_reset().await?;
        }
        Ok(())
    }

    /// Parse + Describe + Sync for one statement, then learns any type it does not know.
    pub(super) async fn prepare(
        &mut self,
        sql: &str,
        options: &QueryOptions<'_>,
    ) -> Result<Arc<Statement>, QueryError> {
        let mut prepared = self
            .prepare_many(&[sql], options)
            .await
            .map_err(|(_, e)| e)?;
        Ok(prepared.remove(0))
    }

    /// Prepares several statements in one round trip (Parse + Describe each, one Sync) and
    /// caches them; `Err((i, error))` names the first one that failed.
    pub(super) async fn prepare_many(
        &mut self,
        sqls: &[&str],
        options: &QueryOptions<'_>,
    ) -> Result<Vec<Arc<Statement>>, (usize, QueryError)> {
        let mut names = Vec::with_capacity(sqls.len());
        let checkpoint = self.checkpoint();
        for (i, sql) in sqls.iter().enumerate() {
            self.next_statement += 1;
            let name = format!("{GATEWAY_STATEMENT_PREFIX}{}", self.next_statement);
            frontend::parse(&name, sql, std::iter::empty(), &mut self.write_buf)
                .and_then(|()| frontend::describe(b'S', &name, &mut self.write_buf))
                .map_err(|e| (i, self.rewind(checkpoint, e)))?;
            names.push(name);
        }
        frontend::sync(&mut self.write_buf);
        self.pending_syncs += 1;
        self.flush().await.map_err(|e| (0, lost(e)))?;

        // Each statement answers ParseComplete, ParameterDescription, RowDescription or
        // NoData; an error ends the exchange and belongs to the statement being described.
        let mut described: Vec<Description> = Vec::with_capacity(sqls.len());
        let mut current: Option<Description> = None;
        let mut error = None;
        loop {
            match self.recv().await.map_err(|e| (described.len(), lost(e)))? {
                Message::ParseComplete => current = Some((Vec::new(), Vec::new())),
                Message::ParameterDescription(body) => {
                    let oids = body
                        .parameters()
                        .collect()
                        .map_err(|e| (described.len(), lost(e)))?;
                    if let Some(entry) = current.as_mut() {
                        entry.0 = oids;
                    }
                }
                Message::RowDescription(body) => {
                    let mut columns = Vec::new();
                    let mut fields = body.fields();
                    while let Some(field) = fields.next().map_err(|e| (described.len(), lost(e)))? {
                        let source = ColumnSource {
                            table_oid: field.table_oid(),
                            column_id: field.column_id(),
                            type_size: field.type_size(),
                            type_modifier: field.type_modifier(),
                        };
                        columns.push((field.name().to_owned(), field.type_oid(), source));
                    }
                    described.extend(current.take().map(|(params, _)| (params, columns)));
                }
                Message::NoData => described.extend(current.take()),
                Message::ErrorResponse(body) => {
                    error = Some(
                        DbError::parse(body.fields()).map_err(|e| (described.len(), lost(e)))?,
                    )
                }
                Message::ReadyForQuery(_) => break,
                other => return Err((described.len(), self.desync(&other))),
            }
        }
        if let Some(error) = error {
            let index = described.len();
            // A statement of the client's holds one of the gateway's names: the connection
            // cannot prepare safely any more, so it goes after this request.
            if error.code == "42P05" && error.message.contains(GATEWAY_STATEMENT_PREFIX) {
                self.retire = true;
            }
            if error.code == "42601" && error.message.contains("multiple commands") {
                let message = "a statement holds more than one command; send each as its own statement (or use /v1/batch)";
                return Err((index, QueryError::Rejected(message.into())));
            }
            return Err((index, QueryError::db(error)));
        }
        if described.len() != sqls.len() {
            return Err((
                described.len(),
                QueryError::ConnectionLost("incomplete statement description".into()),
            ));
        }

        let mut unknown: Vec<u32> = described
            .iter()
            .flat_map(|(params, columns)| {
                params
                    .iter()
                    .copied()
                    .chain(columns.iter().map(|(_, oid, _)| *oid))
            })
            .filter(|oid| options.types.get(*oid).is_none())
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        if !unknown.is_empty() {
            self.learn_types(&unknown, options.types)
                .await
                .map_err(|e| (0, e))?;
        }
        let resolve = |oid: u32| {
            options
                .types
                .get(oid)
                .unwrap_or_else(|| PgType::unknown(oid))
        };
        let mut statements = Vec::with_capacity(sqls.len());
        for ((sql, name), (params, columns)) in sqls.iter().zip(names).zip(described) {
            let statement = Arc::new(Statement {
                name,
                params: params.into_iter().map(resolve).collect(),
                fields: columns
                    .into_iter()
                    .map(|(name, oid, source)| Field::new(name, resolve(oid)).with_source(source))
                    .collect(),
            });
            for evicted in self.statements.insert(sql, statement.clone()) {
                self.queue_close(&evicted.name);
            }
            statements.push(statement);
        }
        Ok(statements)
    }

    /// Looks up types the registry does not know (extension, enum, domain, composite types).
    pub(super) async fn learn_types(
        &mut self,
        oids: &[u32],
        registry: &TypeRegistry,
    ) -> Result<(), QueryError> {
        let mut list = String::from("{");
        for (i, oid) in oids.iter().enumerate() {
            if i > 0 {
                list.push(',');
            }
            list.push_str(&oid.to_string());
        }
        list.push('}');
        let rows =
            self.fetch_text(TYPE_LOOKUP_SQL, &[&list])
                .await
                .map_err(|error| match error {
                    QueryError::Gateway(reason) => QueryError::Catalog(reason),
                    other => other,
                })?;
        let parsed: Vec<TypeRow> = rows
            .iter()
            .filter_map(|row| TypeRow::from_text(row))
            .collect();
        registry.learn(&parsed);
        Ok(())
    }

    /// Runs the gateway's own statement (unnamed, text parameters) and returns its rows as text.
    pub async fn fetch_text(
        &mut self,
        sql: &str,
        params: &[&str],
    ) -> Result<Vec<Vec<Option<String>>>, QueryError> {
        self.ensure_in_sync()?;
        let checkpoint = self.checkpoint();
        frontend::parse("", sql, std::iter::empty(), &mut self.write_buf)
            .map_err(|e| self.rewind(checkpoint, e))?;
        let bound = frontend::bind(
            "",
            "",
            [0i16],
            params.iter(),
            |param, buf| {
                buf.put_slice(param.as_bytes());
                Ok(IsNull::No)
            },
            [0i16],
            &mut self.write_buf,
        );
        if bound.is_err() {
            self.rewind(checkpoint, io::Error::other("unencodable parameter"));
            return Err(QueryError::Gateway("cannot encode the type lookup".into()));
        }
        frontend::execute("", 0, &mut self.write_buf).map_err(|e| self.rewind(checkpoint, e))?;
        frontend::sync(&mut self.write_buf);
        self.pending_syncs += 1;
        self.flush().await.map_err(lost)?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.recv().await.map_err(lost)? {
                Message::ParseComplete | Message::BindComplete | Message::CommandComplete(_) => {}
                Message::DataRow(body) => rows.push(row_to_strings(&body).map_err(lost)?),
                Message::ErrorResponse(body) => {
                    error = Some(DbError::parse(body.fields()).map_err(lost)?)
                }
                Message::ReadyForQuery(_) => break,
                other => return Err(self.desync(&other)),
            }
        }
        match error {
            Some(error) => Err(QueryError::Gateway(error.to_string())),
            None => Ok(rows),
        }
    }

    /// Runs SQL with the simple query protocol (several statements, no parameters) and returns
    /// each statement's command tag. Used for scripts and for the gateway's own resets.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<CommandTag>, QueryError> {
        self.ensure_in_sync()?;
        let checkpoint = self.checkpoint();
        frontend::query(sql, &mut self.write_buf).map_err(|e| self.rewind(checkpoint, e))?;
        self.pending_syncs += 1;
        self.flush().await.map_err(lost)?;
        let mut tags = Vec::new();
        let mut error = None;
        loop {
            match self.recv().await.map_err(lost)? {
                Message::CommandComplete(body) => {
                    tags.push(CommandTag::parse(body.tag().map_err(lost)?))
                }
                Message::EmptyQueryResponse | Message::RowDescription(_) | Message::DataRow(_) => {}
                Message::ErrorResponse(body) => {
                    error = Some(DbError::parse(body.fields()).map_err(lost)?)
                }
                Message::CopyInResponse(_) => self.refuse_copy_in().await?,
                Message::CopyOutResponse(_) | Message::CopyData(_) | Message::CopyDone => {}
                Message::ReadyForQuery(_) => break,
                other => return Err(self.desync(&other)),
            }
        }
        match error {
            Some(error) => Err(QueryError::db(error)),
            None => Ok(tags),
        }
    }

    pub(super) fn encode_bind(
        &mut self,
        statement: &Statement,
        params: &[&RawValue],
    ) -> Result<BytesMut, QueryError> {
        let mut buf = self.write_buf.split_off(self.write_buf.len());
        let mut failure: Option<(usize, String)> = None;
        let mut index = 0;
        let result = frontend::bind(
            "",
            &statement.name,
            [0i16],
            params.iter().zip(statement.params.iter()),
            |(param, ty), buf| {
                index += 1;
                match params::encode(param, Some(ty), buf) {
                    Ok(true) => Ok(IsNull::No),
                    Ok(false) => Ok(IsNull::Yes),
                    Err(reason) => {
                        failure = Some((index, reason.clone()));
                        Err(reason.into())
                    }
                }
            },
            [0i16],
            &mut buf,
        );
        if result.is_err() {
            return Err(match failure {
                Some((index, reason)) => {
                    QueryError::Rejected(format!("parameter ${index}: {reason}"))
                }
                None => QueryError::Rejected("too many parameters (at most 65535)".into()),
            });
        }
        Ok(buf)
    }
}

pub(super) fn row_to_strings(row: &DataRowBody) -> io::Result<Vec<Option<String>>> {
    let buffer = row.buffer();
    row.ranges()
        .map(|range| Ok(range.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned())))
        .collect()
}
