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
use crate::pg::{CommandTag, ResultSink, RowEncoder, RowMode, Statement, ValueFormat};

pub struct ResultWriter<'o> {
    out: &'o mut Vec<u8>,
    encoder: RowEncoder,
    max_bytes: usize,
    statement: Option<Arc<Statement>>,
    rows_in_statement: u64,
    /// Rows written over every statement, for the request log.
    pub total_rows: u64,
    too_large: bool,
}

impl<'o> ResultWriter<'o> {
    pub fn new(out: &'o mut Vec<u8>, mode: RowMode, format: ValueFormat, max_bytes: usize) -> Self {
        ResultWriter {
            out,
            encoder: RowEncoder::new(mode, format),
            max_bytes,
            statement: None,
            rows_in_statement: 0,
            total_rows: 0,
            too_large: false,
        }
    }

    /// `"fields":[…],"rows":[`
    pub fn begin(&mut self, statement: &Arc<Statement>) {
        self.out.extend_from_slice(b"\"fields\":");
        RowEncoder::write_fields(&statement.fields, self.out);
        self.out.extend_from_slice(b",\"rows\":[");
        self.statement = Some(statement.clone());
        self.rows_in_statement = 0;
    }

    pub fn row(&mut self, row: &DataRowBody) -> io::Result<()> {
        if self.too_large {
            return Ok(());
        }
        let Some(statement) = &self.statement else {
            return Ok(());
        };
        // Encoded JSON is never shorter than the row's raw values, so a row whose raw bytes
        // alone pass the limit is refused before a byte of it is encoded: one 300 MB value
        // must not first become 300 MB of JSON.
        if self.out.len() + row.buffer().len() > self.max_bytes {
            self.too_large = true;
            return Ok(());
        }
        if self.rows_in_statement > 0 {
            self.out.push(b',');
        }
        self.encoder.write_row(self.out, &statement.fields, row)?;
        self.rows_in_statement += 1;
        self.total_rows += 1;
        self.too_large = self.out.len() > self.max_bytes;
        Ok(())
    }

    /// `],"command":…,"rowCount":…`
    pub fn end(&mut self, tag: &CommandTag) {
        self.out.extend_from_slice(b"],\"command\":");
        write_json_string(self.out, tag.command.as_bytes());
        self.out.extend_from_slice(b",\"rowCount\":");
        match tag.row_count {
            Some(n) => self
                .out
                .extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
            None => self.out.extend_from_slice(b"null"),
        }
        self.statement = None;
    }

    /// `response_too_large` if the rows did not fit.
    pub fn check_size(&self) -> Result<(), ApiError> {
        if self.too_large {
            Err(ApiError::ResponseTooLarge {
                limit: self.max_bytes,
            })
        } else {
            Ok(())
        }
    }

    pub fn out(&mut self) -> &mut Vec<u8> {
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
