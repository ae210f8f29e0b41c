//! The rows of one statement as the server sends them (`Rows`), read one at a time, and what
//! dropping them halfway leaves owed.

use super::PgConnection;
use super::lost;
use crate::pg::error::DbError;
use crate::pg::error::QueryError;
use crate::pg::statement::CommandTag;
use crate::pg::statement::Field;
use crate::pg::statement::Statement;
use postgres_protocol::message::backend::DataRowBody;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use std::sync::Arc;

/// The rows of one statement, read as the server sends them. Dropping it before the end leaves
/// the connection owing responses; [`PgConnection::recover`] settles that.
pub struct Rows<'c> {
    pub(super) conn: &'c mut PgConnection,
    pub(super) statement: Arc<Statement>,
    pub(super) reset_pending: bool,
    /// Set once the statement has finished; its command tag.
    pub(super) done: Option<CommandTag>,
    pub(super) copy_out: bool,
}

impl Rows<'_> {
    pub fn fields(&self) -> &[Field] {
        &self.statement.fields
    }

    /// The statement, for encoders that outlive a borrow of the rows.
    pub fn statement(&self) -> Arc<Statement> {
        self.statement.clone()
    }

    /// Whether the next message has already arrived: when it has not, a streaming encoder
    /// should send what it has before waiting for Postgres.
    pub fn next_is_buffered(&self) -> bool {
        let buf = &self.conn.read_buf;
        buf.len() >= 5 && {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            buf.len() > len
        }
    }

    /// The next row, or `None` with the command tag available from [`Rows::finish`].
    pub async fn next(&mut self) -> Result<Option<DataRowBody>, QueryError> {
        self.step().await.map(|step| match step {
            Step::Row(row) => Some(row),
            Step::Done(_) => None,
        })
    }

    /// Reads (and discards) what is left and returns the command tag.
    pub async fn finish(mut self) -> Result<CommandTag, QueryError> {
        loop {
            if let Step::Done(tag) = self.step().await? {
                return Ok(tag);
            }
        }
    }

    pub(super) async fn step(&mut self) -> Result<Step, QueryError> {
        if let Some(tag) = &self.done {
            return Ok(Step::Done(tag.clone()));
        }
        loop {
            match self.conn.recv().await.map_err(lost)? {
                Message::DataRow(row) => return Ok(Step::Row(row)),
                Message::CommandComplete(body) => {
                    let tag = CommandTag::parse(body.tag().map_err(lost)?);
                    self.done = Some(tag.clone());
                    self.settle().await?;
                    if self.copy_out {
                        return Err(QueryError::Rejected(
                            "COPY TO STDOUT is not supported over HTTP; use SELECT (with NDJSON streaming for large results)".into(),
                        ));
                    }
                    return Ok(Step::Done(tag));
                }
                Message::EmptyQueryResponse => {
                    self.done = Some(CommandTag::default());
                    self.settle().await?;
                    return Ok(Step::Done(CommandTag::default()));
                }
                Message::ErrorResponse(body) => {
                    // Boxed before the wait below, so the future does not carry 360 bytes.
                    let error = QueryError::db(DbError::parse(body.fields()).map_err(lost)?);
                    self.done = Some(CommandTag::default());
                    self.settle().await?;
                    return Err(error);
                }
                Message::CopyInResponse(_) => {
                    // Copy-in mode swallowed the Sync already sent; the server now waits for
                    // another after the error, and owes one ReadyForQuery as before.
                    self.conn.refuse_copy_in().await?;
                    frontend::sync(&mut self.conn.write_buf);
                    self.conn.flush().await.map_err(lost)?;
                }
                Message::CopyOutResponse(_) => self.copy_out = true,
                Message::CopyData(_) | Message::CopyDone => {}
                other => return Err(self.conn.desync(&other)),
            }
        }
    }

    /// After the statement's last message: its ReadyForQuery and, if one was pipelined, the
    /// session reset's answer.
    pub(super) async fn settle(&mut self) -> Result<(), QueryError> {
        self.conn.expect_ready().await.map_err(lost)?;
        if self.reset_pending {
            self.reset_pending = false;
            // The statement's outcome stands; a reset that fails only means this connection
            // is closed instead of reused (`expect_command_ok` marked it broken).
            // Boxed: only statements that change the session have one, and its state would
            // otherwise be carried by every row's read.
            if let Err(error) = Box::pin(self.conn.expect_session_reset()).await {
                tracing::warn!(%error, "session reset failed; the connection will be closed");
            }
        }
        Ok(())
    }
}

pub(super) enum Step {
    Row(DataRowBody),
    Done(CommandTag),
}
