//! What `POST /sql` answers, in Neon's shapes: a result is
//! `{"fields":[…],"rows":[…],"command":…,"rowCount":…,"rowAsArray":…}` (a batch's are in
//! `{"results":[…]}`), written straight into the response buffer as rows arrive; an error is a
//! flat object with a `message`, and for a Postgres error every field Neon reports, so the
//! driver raises `NeonDbError` with them.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use postgres_protocol::message::backend::DataRowBody;
use serde_json::{Map, Value};

use crate::api::body::Body;
use crate::api::error::ApiError;
use crate::api::results::{BoundedSink, RowBudget, write_command};
use crate::pg::json::{write_json_array, write_json_string};
use crate::pg::{
    CommandTag, DbError, Field, ResultSink, RowEncoder, RowMode, Statement, ValueFormat,
};

/// Writes Neon result objects. Past `max_bytes` the remaining rows are read and dropped (the
/// statement still completes) and the result is `response_too_large`, as on `/v1/query`.
pub struct NeonWriter<'o> {
    out: &'o mut Vec<u8>,
    format: ValueFormat,
    /// Each statement's row mode (a single query has one).
    array_modes: &'o [bool],
    current: Option<(Arc<Statement>, RowEncoder, bool)>,
    budget: RowBudget,
}

impl<'o> NeonWriter<'o> {
    pub fn new(
        out: &'o mut Vec<u8>,
        raw_text: bool,
        array_modes: &'o [bool],
        max_bytes: usize,
    ) -> Self {
        NeonWriter {
            out,
            // Raw text is Postgres's text output as a string; otherwise the JSON mapping of
            // `types: "json"`, which agrees with Neon's for every type Neon converts.
            format: if raw_text {
                ValueFormat::Text
            } else {
                ValueFormat::Json
            },
            array_modes,
            current: None,
            budget: RowBudget::new(max_bytes),
        }
    }

    /// `{"fields":[…],"rows":[`
    pub fn begin(&mut self, index: usize, statement: &Arc<Statement>) {
        let array = self.array_modes.get(index).copied().unwrap_or(false);
        self.out.extend_from_slice(b"{\"fields\":");
        write_fields(&statement.fields, self.out);
        self.out.extend_from_slice(b",\"rows\":[");
        let mode = if array {
            RowMode::Array
        } else {
            RowMode::Object
        };
        self.current = Some((statement.clone(), RowEncoder::new(mode, self.format), array));
        self.budget.start_statement();
    }

    pub fn row(&mut self, row: &DataRowBody) -> io::Result<()> {
        let Some((statement, encoder, _)) = &mut self.current else {
            return Ok(());
        };
        self.budget
            .write_row(self.out, encoder, &statement.fields, row)
    }

    /// `],"command":…,"rowCount":…,"rowAsArray":…}`
    pub fn end(&mut self, tag: &CommandTag) {
        let array = self.current.take().is_some_and(|(_, _, array)| array);
        self.out.extend_from_slice(b"],");
        write_command(self.out, tag);
        self.out.extend_from_slice(if array {
            b",\"rowAsArray\":true}"
        } else {
            b",\"rowAsArray\":false}"
        });
    }
}

impl super::request::Options {
    /// The writer of results in these options' format into `out`; `array_modes` says each
    /// statement's row mode.
    pub fn writer<'o>(
        &self,
        out: &'o mut Vec<u8>,
        array_modes: &'o [bool],
        max_bytes: usize,
    ) -> NeonWriter<'o> {
        NeonWriter::new(out, self.raw_text, array_modes, max_bytes)
    }
}

impl BoundedSink for NeonWriter<'_> {
    fn budget(&self) -> &RowBudget {
        &self.budget
    }

    fn out(&mut self) -> &mut Vec<u8> {
        self.out
    }
}

impl ResultSink for NeonWriter<'_> {
    fn begin_statement(&mut self, index: usize, statement: &Arc<Statement>) {
        if index > 0 {
            self.out.push(b',');
        }
        self.begin(index, statement);
    }

    fn row(&mut self, row: &DataRowBody) -> io::Result<()> {
        NeonWriter::row(self, row)
    }

    fn end_statement(&mut self, tag: &CommandTag) {
        self.end(tag);
    }
}

/// `[{"name","dataTypeID","tableID","columnID","dataTypeSize","dataTypeModifier","format"}, …]`
/// — node-postgres's `FieldDef`, which the driver hands on as `fields`.
fn write_fields(fields: &[Field], out: &mut Vec<u8>) {
    let mut number = itoa::Buffer::new();
    write_json_array(out, fields, |out, field| {
        out.extend_from_slice(b"{\"name\":");
        write_json_string(out, field.name.as_bytes());
        out.extend_from_slice(b",\"dataTypeID\":");
        out.extend_from_slice(number.format(field.ty.oid).as_bytes());
        out.extend_from_slice(b",\"tableID\":");
        out.extend_from_slice(number.format(field.source.table_oid).as_bytes());
        out.extend_from_slice(b",\"columnID\":");
        out.extend_from_slice(number.format(field.source.column_id).as_bytes());
        out.extend_from_slice(b",\"dataTypeSize\":");
        out.extend_from_slice(number.format(field.source.type_size).as_bytes());
        out.extend_from_slice(b",\"dataTypeModifier\":");
        out.extend_from_slice(number.format(field.source.type_modifier).as_bytes());
        out.extend_from_slice(b",\"format\":\"text\"}");
    });
}

/// An error as Neon answers it. A Postgres error: 400 and Neon's flat body (`message`, `code`,
/// `detail`, `hint`, `position`, … — absent fields `null`, positions and line as strings, as
/// Neon and node-postgres give them). Anything else keeps sluice's status and `Retry-After`, and
/// its body is `{"message", "kind", …}`: the driver shows it in its error message.
pub fn error_response(error: ApiError) -> Response<Body> {
    let mut body = Map::new();
    body.insert("message".into(), error.message().into());
    match &error {
        ApiError::Database {
            error: db,
            statement_index,
        } => {
            insert_db_fields(&mut body, db);
            if let Some(index) = statement_index {
                body.insert("statementIndex".into(), (*index).into());
            }
        }
        ApiError::PayloadTooLarge { limit } | ApiError::ResponseTooLarge { limit } => {
            body.insert("limit".into(), (*limit).into());
        }
        _ => {}
    }
    body.insert("kind".into(), error.kind().into());
    if let Some(retry_after) = error.retry_after() {
        body.insert(
            "retryAfterMs".into(),
            (retry_after.as_millis() as u64).into(),
        );
    }
    let bytes = serde_json::to_vec(&Value::Object(body)).unwrap_or_else(|_| b"{}".to_vec());
    // The status, `Retry-After`, `Allow` and content type are sluice's own.
    let mut response = error.into_response();
    *response.body_mut() = Body::Full(Some(Bytes::from(bytes)));
    response
}

fn insert_db_fields(body: &mut Map<String, Value>, db: &DbError) {
    let text = |value: &Option<String>| value.clone().map_or(Value::Null, Value::from);
    let number = |value: Option<u32>| value.map_or(Value::Null, |n| n.to_string().into());
    let fields = [
        ("code", Value::from(db.code.clone())),
        ("detail", text(&db.detail)),
        ("hint", text(&db.hint)),
        ("position", number(db.position)),
        ("internalPosition", number(db.internal_position)),
        ("internalQuery", text(&db.internal_query)),
        ("severity", Value::from(db.severity.clone())),
        ("where", text(&db.where_)),
        ("table", text(&db.table)),
        ("column", text(&db.column)),
        ("schema", text(&db.schema)),
        ("dataType", text(&db.data_type)),
        ("constraint", text(&db.constraint)),
        ("file", text(&db.file)),
        ("line", number(db.line)),
        ("routine", text(&db.routine)),
    ];
    for (name, value) in fields {
        body.insert(name.into(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(response: Response<Body>) -> Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn postgres_errors_carry_neon_fields_at_400() {
        let mut db = DbError::new(
            "23505",
            "duplicate key value violates unique constraint \"t_pkey\"",
        );
        db.detail = Some("Key (id)=(1) already exists.".into());
        db.position = Some(8);
        let response = error_response(ApiError::Database {
            error: Box::new(db),
            statement_index: None,
        });
        assert_eq!(response.status(), 400);
        let body = body_of(response).await;
        assert_eq!(body["code"], "23505");
        assert_eq!(body["detail"], "Key (id)=(1) already exists.");
        assert_eq!(body["position"], "8");
        assert_eq!(body["hint"], Value::Null);
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .starts_with("duplicate key")
        );
    }

    #[tokio::test]
    async fn gateway_errors_keep_status_and_retry_after() {
        let response = error_response(ApiError::QueueFull {
            retry_after: std::time::Duration::from_millis(1500),
        });
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "2");
        let body = body_of(response).await;
        assert_eq!(body["kind"], "queue_full");
        assert_eq!(body["retryAfterMs"], 1500);
        assert!(body["message"].as_str().unwrap().contains("Retry-After"));
    }
}
