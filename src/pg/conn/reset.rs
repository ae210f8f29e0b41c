//! Getting a connection back to a clean state: settling an abandoned exchange (cancel, read
//! what is owed), rolling back and resetting the session, closing it for good, and the
//! bookkeeping that makes an interrupted request recoverable (checkpoints, queued resets).

use super::PgConnection;
use super::TxStatus;
use super::lost;
use crate::pg::error::DbError;
use crate::pg::error::QueryError;
use crate::pg::sql::GATEWAY_STATEMENT_PREFIX;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use std::io;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

/// See [`PgConnection::checkpoint`].
#[derive(Clone, Copy)]
pub(super) struct Checkpoint {
    pub(super) write_len: usize,
    pub(super) pending_syncs: usize,
    pub(super) statement_timeout_ms: u64,
    pub(super) local_timeout_ms: Option<u64>,
}

/// Sent after a statement that may have changed the session: back to the start-up state,
/// keeping only the gateway's own prepared statements (`DEALLOCATE ALL` would drop those too).
/// The equivalent of `DISCARD ALL` minus `DEALLOCATE ALL` and `DISCARD PLANS`, plus a fresh
/// random seed: `DISCARD ALL` leaves a `setseed()` in place, which would make the next
/// tenant's `random()` predictable. The seed comes from `gen_random_uuid()` (the strong
/// random source, which `setseed` does not touch). Every name and operator is
/// schema-qualified: a role's own `search_path` (restored by `RESET ALL`) must not be able to
/// put a tenant's function or operator into the gateway's reset.
pub(super) const SESSION_RESET_SQL: &str = "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; \
    UNLISTEN *; SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES; \
    SELECT pg_catalog.setseed(pg_catalog.hashtext(pg_catalog.gen_random_uuid()::pg_catalog.text)\
    ::pg_catalog.float8 OPERATOR(pg_catalog./) 2147483648); \
    DO $sluice$DECLARE s record; BEGIN FOR s IN SELECT name FROM pg_catalog.pg_prepared_statements \
    WHERE from_sql LOOP EXECUTE pg_catalog.format('DEALLOCATE %I', s.name); END LOOP; END$sluice$";

/// The first pause before a cancel is sent again while its statement is still running, and
/// the longest (the pause doubles in between).
pub(super) const FIRST_CANCEL_RETRY: Duration = Duration::from_millis(100);
pub(super) const MAX_CANCEL_RETRY: Duration = Duration::from_secs(5);

impl PgConnection {
    /// Brings the connection back to a clean state after whatever happened to it: settles
    /// the exchange (see [`PgConnection::settle`]), rolls back an open transaction and resets
    /// the session. Returns false when the connection cannot be trusted any more and must be
    /// closed.
    pub async fn recover(&mut self, deadline: Duration) -> bool {
        if self.retire {
            return false;
        }
        let result = tokio::time::timeout(deadline, async {
            self.settle_inner().await?;
            if self.tx_status != TxStatus::Idle || self.session_dirty {
                self.reset_session().await?;
            }
            Ok::<(), QueryError>(())
        })
        .await;
        matches!(result, Ok(Ok(()))) && self.is_clean()
    }

    /// Brings the protocol back in sync after an exchange was abandoned halfway (the client
    /// vanished): asks Postgres to cancel a statement still running and reads what is still
    /// owed. A transaction stays open (failed, if its statement was cancelled). Returns false
    /// when the connection cannot be trusted any more.
    pub async fn settle(&mut self, deadline: Duration) -> bool {
        let result = tokio::time::timeout(deadline, self.settle_inner()).await;
        matches!(result, Ok(Ok(()))) && self.is_in_sync()
    }

    pub(super) async fn settle_inner(&mut self) -> Result<(), QueryError> {
        if self.is_broken() {
            return Err(QueryError::ConnectionLost(
                "the connection is broken".into(),
            ));
        }
        if self.pending_syncs > 0 {
            // The cancel is complete (the server has signalled the backend) when its socket
            // closes, so a late cancel cannot hit the next statement on this connection.
            let _ = self.cancel.cancel().await;
            // A cancel that reached the backend before the statement started is ignored:
            // while the answer is still owed, the cancel is sent again, backing off.
            let mut pause = FIRST_CANCEL_RETRY;
            while self.pending_syncs > 0 {
                match tokio::time::timeout(pause, self.recv()).await {
                    Ok(message) => {
                        if let Message::CopyInResponse(_) = message.map_err(lost)? {
                            self.refuse_copy_in().await?;
                        }
                    }
                    Err(_) => {
                        let _ = self.cancel.cancel().await;
                        pause = (pause * 2).min(MAX_CANCEL_RETRY);
                    }
                }
            }
        }
        Ok(())
    }

    /// Rolls back any transaction and resets the session (one round trip).
    pub async fn reset_session(&mut self) -> Result<(), QueryError> {
        self.ensure_in_sync()?;
        if self.tx_status != TxStatus::Idle {
            let checkpoint = self.checkpoint();
            frontend::query("ROLLBACK", &mut self.write_buf)
                .map_err(|e| self.rewind(checkpoint, e))?;
            self.pending_syncs += 1;
        }
        self.queue_session_reset();
        self.flush().await.map_err(lost)?;
        if self.pending_syncs > 1 {
            self.expect_command_ok().await?;
        }
        self.expect_session_reset().await
    }

    /// Ends the session politely and waits (at most `wait`) until the server has closed its
    /// side: only then has the backend left `pg_stat_activity`.
    pub async fn terminate(self, wait: Duration) {
        let _ = tokio::time::timeout(wait, self.close_until_gone(wait, || {})).await;
    }

    /// Ends the session and returns only once the server has closed the socket (or the socket
    /// failed): the backend is gone, so a budget slot freed after this is really free. Sends
    /// Terminate when the protocol stream is intact, then half-closes (a backend reading a
    /// half-written message sees the end of input instead). While the backend is still busy
    /// — a statement running, perhaps one that started after an earlier cancel arrived — the
    /// cancel is re-sent, backing off; `on_stuck` runs once if that takes longer than
    /// `stuck_after`.
    pub async fn close_until_gone(mut self, stuck_after: Duration, on_stuck: impl FnOnce()) {
        let started = tokio::time::Instant::now();
        let mut on_stuck = Some(on_stuck);
        while crate::pg::faults::armed(&self.cancel.target, crate::pg::faults::Fault::CloseHangs) {
            tokio::time::sleep(FIRST_CANCEL_RETRY).await;
            if started.elapsed() >= stuck_after
                && let Some(report) = on_stuck.take()
            {
                report();
            }
        }
        if !self.is_broken() {
            frontend::terminate(&mut self.write_buf);
            let _ = self.flush().await;
        }
        let _ = self.stream.shutdown().await;
        let mut pause = FIRST_CANCEL_RETRY;
        let mut sink = [0u8; 4096];
        loop {
            match tokio::time::timeout(pause, self.stream.read(&mut sink)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => continue,
                Err(_) => {
                    if started.elapsed() >= stuck_after
                        && let Some(report) = on_stuck.take()
                    {
                        report();
                    }
                    let _ = self.cancel.cancel().await;
                    pause = (pause * 2).min(MAX_CANCEL_RETRY);
                }
            }
        }
    }

    /// Every operation starts here. It also lifts a statement-cache protection left behind by
    /// a pipeline whose future was dropped mid-way (its client vanished): protection never
    /// outlives the operation that set it, whatever way that operation ended.
    pub(super) fn ensure_in_sync(&mut self) -> Result<(), QueryError> {
        self.statements.unprotect();
        if self.is_in_sync() {
            Ok(())
        } else {
            Err(QueryError::ConnectionLost(
                "connection is not ready for a statement".into(),
            ))
        }
    }

    /// Pipelines `SET statement_timeout` in front of the statement when this call's timeout
    /// differs from the session's (one message, no extra round trip). Inside a transaction it
    /// is `SET LOCAL`, which ends with the transaction and leaves the session value alone.
    /// In a failed transaction nothing is sent (it would fail; statements there fail anyway,
    /// except `ROLLBACK TO SAVEPOINT`, which needs no timeout).
    pub(super) fn queue_statement_timeout(&mut self, timeout_ms: u64) -> bool {
        let sql = match self.tx_status {
            TxStatus::Idle if timeout_ms != self.statement_timeout_ms => {
                self.statement_timeout_ms = timeout_ms;
                format!("SET statement_timeout = {timeout_ms}")
            }
            TxStatus::InTransaction
                if timeout_ms != self.local_timeout_ms.unwrap_or(self.statement_timeout_ms) =>
            {
                self.local_timeout_ms = Some(timeout_ms);
                format!("SET LOCAL statement_timeout = {timeout_ms}")
            }
            _ => return false,
        };
        self.queue_gateway_query(&sql);
        true
    }

    pub(super) fn queue_session_reset(&mut self) {
        self.queue_gateway_query(SESSION_RESET_SQL);
        self.session_dirty = true;
    }

    /// Queues the gateway's own simple query (answered by one ReadyForQuery). Its text is the
    /// gateway's and always encodes; were it ever not to, the connection is given up rather
    /// than left owing an answer that will never come.
    pub(super) fn queue_gateway_query(&mut self, sql: &str) {
        let checkpoint = self.checkpoint();
        match frontend::query(sql, &mut self.write_buf) {
            Ok(()) => self.pending_syncs += 1,
            Err(error) => {
                self.rewind(checkpoint, error);
                self.broken = true;
            }
        }
    }

    pub(super) fn queue_close(&mut self, name: &str) {
        // Answered by CloseComplete before the next statement's responses; `recv` callers skip it.
        let checkpoint = self.checkpoint();
        if let Err(error) = frontend::close(b'S', name, &mut self.write_buf) {
            self.rewind(checkpoint, error);
            self.broken = true;
        }
    }

    /// If `error` says one of the gateway's prepared statements no longer exists (a
    /// `DEALLOCATE ALL` or `DISCARD ALL` the API could not see, in a function), forgets every
    /// cached statement (closing them: some may still exist, and closing a missing one is no
    /// error) so that later requests prepare afresh. Returns whether it did.
    pub(super) fn lost_gateway_statement(&mut self, error: &DbError) -> bool {
        let lost = error.code == "26000"
            && error
                .message
                .contains(&format!("\"{GATEWAY_STATEMENT_PREFIX}"));
        if lost {
            for statement in self.statements.clear() {
                self.queue_close(&statement.name);
            }
        }
        lost
    }

    /// Where the write buffer and the exchange's bookkeeping stand before a request queues
    /// its messages; see [`PgConnection::rewind`].
    pub(super) fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            write_len: self.write_buf.len(),
            pending_syncs: self.pending_syncs,
            statement_timeout_ms: self.statement_timeout_ms,
            local_timeout_ms: self.local_timeout_ms,
        }
    }

    /// A message could not be encoded (a NUL in a string, a message over 1 GiB): takes back
    /// everything queued since `at`, so no half-written message is ever sent and the
    /// connection stays in sync with nothing owed. The request is refused as the client's.
    pub(super) fn rewind(&mut self, at: Checkpoint, error: io::Error) -> QueryError {
        self.write_buf.truncate(at.write_len);
        self.pending_syncs = at.pending_syncs;
        self.statement_timeout_ms = at.statement_timeout_ms;
        self.local_timeout_ms = at.local_timeout_ms;
        QueryError::Rejected(format!("the request cannot be sent to Postgres: {error}"))
    }
}
