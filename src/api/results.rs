//! Statement results as API.md's JSON: `"fields":[…],"rows":[…],"command":…,"rowCount":…`,
//! written straight into the response buffer as rows arrive, for `/v1/query`, `/v1/batch`
//! and interactive transactions alike. Past `max_bytes` the remaining rows are read and
//! dropped — the statement still completes, so it "executed" — and the result is
//! `response_too_large`.

use std::io;
use std::sync::Arc;

use postgres_protocol::message::backend::DataRowBody;

use super::error::ApiError;
use crate::pg::json::write_json_string;
use crate::pg::{CommandTag, Field, ResultSink, RowEncoder, RowMode, Statement, ValueFormat};

/// What every result writer keeps besides its output: rows counted, and the response size
/// limit. Past `max_bytes` the remaining rows are read and dropped and the result is
/// `response_too_large`.
pub struct RowBudget {
    max_bytes: usize,
    rows_in_statement: u64,
    /// Rows written over every statement, for the request log.
    total_rows: u64,
    too_large: bool,
}

impl RowBudget {
    pub fn new(max_bytes: usize) -> Self {
        RowBudget {
            max_bytes,
            rows_in_statement: 0,
            total_rows: 0,
            too_large: false,
        }
    }

    /// A statement's rows begin: the next row is its first.
    pub fn start_statement(&mut self) {
        self.rows_in_statement = 0;
    }

    /// Writes `row` to `out` (a comma before all but a statement's first), unless the
    /// response is already past the limit.
    pub fn write_row(
        &mut self,
        out: &mut Vec<u8>,
        encoder: &mut RowEncoder,
        fields: &[Field],
        row: &DataRowBody,
    ) -> io::Result<()> {
        if self.too_large {
            return Ok(());
        }
        // Encoded JSON is never shorter than the row's raw values, so a row whose raw bytes
        // alone pass the limit is refused before a byte of it is encoded: one 300 MB value
        // must not first become 300 MB of JSON.
        if out.len() + row.buffer().len() > self.max_bytes {
            self.too_large = true;
            return Ok(());
        }
        if self.rows_in_statement > 0 {
            out.push(b',');
        }
        encoder.write_row(out, fields, row)?;
        self.rows_in_statement += 1;
        self.total_rows += 1;
        self.too_large = out.len() > self.max_bytes;
        Ok(())
    }
}

/// A result writer under the response size limit: `/v1/query`'s and `POST /sql`'s.
pub trait BoundedSink: ResultSink {
    fn budget(&self) -> &RowBudget;

    /// The response being written, for what goes around the results.
    fn out(&mut self) -> &mut Vec<u8>;

    /// `response_too_large` if the rows did not fit.
    fn check_size(&self) -> Result<(), ApiError> {
        let budget = self.budget();
        if budget.too_large {
            Err(ApiError::ResponseTooLarge {
                limit: budget.max_bytes,
            })
        } else {
            Ok(())
        }
    }

    /// Rows written over every statement, for the request log.
    fn total_rows(&self) -> u64 {
        self.budget().total_rows
    }
}

/// `"command":…,"rowCount":…` — a statement's command tag, in every response shape.
pub fn write_command(out: &mut Vec<u8>, tag: &CommandTag) {
    out.extend_from_slice(b"\"command\":");
    write_json_string(out, tag.command.as_bytes());
    out.extend_from_slice(b",\"rowCount\":");
    match tag.row_count {
        Some(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

pub struct ResultWriter<'o> {
    out: &'o mut Vec<u8>,
    encoder: RowEncoder,
    statement: Option<Arc<Statement>>,
    budget: RowBudget,
}

impl<'o> ResultWriter<'o> {
    pub fn new(out: &'o mut Vec<u8>, mode: RowMode, format: ValueFormat, max_bytes: usize) -> Self {
        ResultWriter {
            out,
            encoder: RowEncoder::new(mode, format),
            statement: None,
            budget: RowBudget::new(max_bytes),
        }
    }

    /// `"fields":[…],"rows":[`
    pub fn begin(&mut self, statement: &Arc<Statement>) {
        self.out.extend_from_slice(b"\"fields\":");
        RowEncoder::write_fields(&statement.fields, self.out);
        self.out.extend_from_slice(b",\"rows\":[");
        self.statement = Some(statement.clone());
        self.budget.start_statement();
    }

    pub fn row(&mut self, row: &DataRowBody) -> io::Result<()> {
        let Some(statement) = &self.statement else {
            return Ok(());
        };
        self.budget
            .write_row(self.out, &mut self.encoder, &statement.fields, row)
    }

    /// `],"command":…,"rowCount":…`
    pub fn end(&mut self, tag: &CommandTag) {
        self.out.extend_from_slice(b"],");
        write_command(self.out, tag);
        self.statement = None;
    }
}

impl BoundedSink for ResultWriter<'_> {
    fn budget(&self) -> &RowBudget {
        &self.budget
    }

    fn out(&mut self) -> &mut Vec<u8> {
        self.out
    }
}

/// A batch's results: `{…},{…}` — each statement an object, for the `results` array.
impl ResultSink for ResultWriter<'_> {
    fn begin_statement(&mut self, index: usize, statement: &Arc<Statement>) {
        if index > 0 {
            self.out.push(b',');
        }
        self.out.push(b'{');
        self.begin(statement);
    }

    fn row(&mut self, row: &DataRowBody) -> io::Result<()> {
        ResultWriter::row(self, row)
    }

    fn end_statement(&mut self, tag: &CommandTag) {
        self.end(tag);
        self.out.push(b'}');
    }
}
