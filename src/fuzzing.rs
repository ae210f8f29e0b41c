//! The fuzz entry surface: one function per target in `fuzz/` (cargo-fuzz), each taking the raw
//! input and running it through the code the gateway runs on untrusted bytes — the SQL lexer,
//! parameter encoding, request decoding and validation, the Postgres message decoder and row
//! encoder, the config parser, the HTTP/1.1 fast path's request head — then checking the invariants the rest of the gateway relies on.
//! A broken invariant panics: that is how libFuzzer learns of it. `tests/fuzz_seeds.rs` runs
//! the committed seeds through the same functions on stable Rust.
//!
//! Not an API: hidden from the docs, and only as wide as the targets need. Where the gateway's
//! own decision is inline in an async handler (a transaction's body rules, `transaction` with
//! modes in a script batch), the few lines are repeated here and say which handler they mirror.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message;
use serde_json::value::RawValue;

use crate::api::batch::{BatchRequest, begin_sql, check_script, check_statements};
use crate::api::error::ApiError;
use crate::api::parse_json;
use crate::api::query::{Limits, QueryRequest};
use crate::api::transactions::BeginRequest;
use crate::config::{Config, PostgresUrl, SessionReset, defaults};
use crate::pg::encode::{RowEncoder, RowMode, ValueFormat};
use crate::pg::error::DbError;
use crate::pg::sql::SqlAnalysis;
use crate::pg::statement::{CommandTag, Field};
use crate::pg::types::{self, PgType, TypeRegistry, TypeRow};

/// `sql_lexer`: any text (bytes are converted lossily, as a client's JSON string could not hold
/// invalid UTF-8 anyway). Statement spans must be ascending, disjoint, non-empty ranges on
/// character boundaries of the text — `/v1/batch` slices scripts by them. The bounded memo of
/// analyses must give the same analysis.
pub fn sql_lexer(data: &[u8]) {
    let sql = String::from_utf8_lossy(data);
    let analysis = SqlAnalysis::of(&sql);
    // The memo the API reads through (filled, and emptied when full, by every input here).
    assert_eq!(
        *crate::pg::sql::analysis_of(&sql),
        analysis,
        "the memo gives what lexing gives"
    );
    assert_eq!(
        analysis.statement_spans.len(),
        analysis.statements,
        "one span per statement"
    );
    let mut end = 0;
    for span in &analysis.statement_spans {
        assert!(span.start >= end, "spans ascend and do not overlap");
        assert!(span.start < span.end, "a statement is not empty");
        assert!(span.end <= sql.len(), "a span stays within the text");
        assert!(
            sql.is_char_boundary(span.start) && sql.is_char_boundary(span.end),
            "a span starts and ends on character boundaries"
        );
        end = span.end;
    }
    if analysis.statements == 0 {
        assert!(!analysis.copies_via_client && !analysis.transaction_control);
    }
}

/// The placeholder types the `params` target encodes every value for: none (unknown), scalars,
/// JSON, and arrays with `,` and `;` (`box[]`) delimiters.
const PARAM_TYPES: &[Option<u32>] = &[
    None,
    Some(16),   // bool
    Some(23),   // int4
    Some(25),   // text
    Some(3802), // jsonb
    Some(1000), // bool[]
    Some(1007), // int4[]
    Some(1009), // text[]
    Some(1020), // box[]
    Some(3807), // jsonb[]
];

/// `params`: any JSON text as one parameter, decoded as the API decodes `params` (a borrowed
/// `RawValue`), then encoded for each of [`PARAM_TYPES`].
pub fn params(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(raw) = serde_json::from_str::<&RawValue>(text) else {
        return;
    };
    let mut out = BytesMut::new();
    for oid in PARAM_TYPES {
        let ty = oid.and_then(types::builtin);
        out.clear();
        let Ok(not_null) = crate::pg::params::encode(raw, ty.as_deref(), &mut out) else {
            continue;
        };
        if !not_null {
            assert!(out.is_empty(), "SQL NULL writes nothing");
        }
        let is_array = ty.as_deref().is_some_and(PgType::is_array);
        if is_array && raw.get().trim_start().starts_with('[') {
            assert!(
                out.starts_with(b"{") && out.ends_with(b"}"),
                "a JSON array for an array placeholder is an array literal"
            );
        }
    }
}

/// `request_decode`: the same bytes as the body of every route (and as `/sql`'s connection
/// string), decoded and validated as the
/// handlers do before they touch a connection. Whatever the bytes, the answer is a value or a
/// client error (4xx) — never a panic, never a 5xx.
pub fn request_decode(data: &[u8]) {
    for result in [
        query(data, LIMITS, false),
        batch(data, LIMITS),
        transaction_begin(data),
        query(data, LIMITS, true),
        transaction_batch(data, LIMITS),
        transaction_end(data),
        crate::api::neon::decode(data, LIMITS),
    ] {
        if let Err(error) = result {
            assert!(
                error.status().is_client_error(),
                "a request body is answered 4xx, not {} ({})",
                error.status(),
                error.kind()
            );
            let _ = error.to_json();
        }
    }
    // The same bytes as a `Neon-Connection-String` header.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::api::neon::request::ConnectionString::parse(text);
    }
}

/// The limits requests are checked against: the default statement timeout, and an SQL bound
/// small enough (the default is 1 MiB) that fuzz inputs reach its refusal too.
const LIMITS: Limits = Limits {
    max_sql_bytes: 2048,
    statement_timeout_ms: defaults::STATEMENT_TIMEOUT_MS,
    session_reset: SessionReset::Auto,
};

/// `/v1/query`, or with `in_transaction` `/v1/transactions/{id}/query`.
fn query(body: &[u8], limits: Limits, in_transaction: bool) -> Result<(), ApiError> {
    let request: QueryRequest = parse_json(body)?;
    let prepared = request.check(limits)?;
    assert!(prepared.statement_timeout_ms > 0);
    assert!(prepared.statement_timeout_ms <= limits.statement_timeout_ms);
    assert_eq!(prepared.analysis.statements, 1);
    assert_eq!(prepared.analysis.placeholders, prepared.params.len());
    // Mirrors `api::transactions::call` (Action::Query).
    if in_transaction && prepared.analysis.transaction_control {
        return Err(ApiError::BadRequest("transaction control".into()));
    }
    Ok(())
}

/// `/v1/batch`: statements, or a script (whose checks mirror `api::batch::handle`).
fn batch(body: &[u8], limits: Limits) -> Result<(), ApiError> {
    let request: BatchRequest = parse_json(body)?;
    let has_modes =
        request.isolation.is_some() || request.read_only.is_some() || request.deferrable.is_some();
    let begin = begin_sql(request.isolation, request.read_only, request.deferrable);
    assert!(begin.starts_with("BEGIN"));
    match (&request.statements, &request.script) {
        (Some(statements), None) => {
            let checked = check_statements(statements, request.timeout_ms, limits)?;
            assert_eq!(checked.statements.len(), statements.len());
            let timeout = checked.timeout_ms;
            assert!(timeout > 0 && timeout <= limits.statement_timeout_ms);
            Ok(())
        }
        (None, Some(script)) => {
            let transaction = request.transaction.unwrap_or(true);
            if has_modes && !transaction {
                return Err(ApiError::BadRequest("modes need a transaction".into()));
            }
            let analysis = check_script(script, transaction, limits.max_sql_bytes)?;
            if request.timeout_ms == Some(0) {
                return Err(ApiError::BadRequest("timeout 0".into()));
            }
            // Without a transaction the script runs statement by statement, sliced by span.
            // Whitespace as Postgres's scanner knows it: other Unicode spaces (U+00A0, U+2000)
            // are identifier characters to Postgres, so a span of them is a statement.
            let postgres_space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c');
            for span in &analysis.statement_spans {
                let statement = &script[span.clone()];
                assert!(!statement.trim_matches(postgres_space).is_empty());
            }
            Ok(())
        }
        _ => Err(ApiError::BadRequest("statements or script".into())),
    }
}

/// `POST /v1/transactions` (mirrors `api::transactions::begin`: an empty body is allowed).
fn transaction_begin(body: &[u8]) -> Result<(), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let request: BeginRequest = parse_json(body)?;
    if request.idle_timeout_ms == Some(0) {
        return Err(ApiError::BadRequest("idle timeout 0".into()));
    }
    let tenant_idle = Duration::from_millis(defaults::TRANSACTION_IDLE_TIMEOUT_MS);
    let idle = request
        .idle_timeout_ms
        .map(Duration::from_millis)
        .map_or(tenant_idle, |d| d.min(tenant_idle));
    assert!(!idle.is_zero());
    let begin = begin_sql(request.isolation, request.read_only, request.deferrable);
    assert!(begin.starts_with("BEGIN"));
    Ok(())
}

/// `/v1/transactions/{id}/batch` (mirrors `api::transactions::call`, Action::Batch).
fn transaction_batch(body: &[u8], limits: Limits) -> Result<(), ApiError> {
    let request: BatchRequest = parse_json(body)?;
    let Some(statements) = &request.statements else {
        return Err(ApiError::BadRequest("send statements".into()));
    };
    if request.script.is_some()
        || request.transaction.is_some()
        || request.isolation.is_some()
        || request.read_only.is_some()
        || request.deferrable.is_some()
    {
        return Err(ApiError::BadRequest("statements only".into()));
    }
    check_statements(statements, request.timeout_ms, limits)?;
    Ok(())
}

/// `/v1/transactions/{id}/commit` and `/rollback` take no body (or `{}`).
fn transaction_end(body: &[u8]) -> Result<(), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) || body == b"{}" {
        Ok(())
    } else {
        Err(ApiError::BadRequest("no body".into()))
    }
}

/// `server_messages`: bytes as a broken or hostile Postgres server could send them. The first
/// byte picks `rowMode` and `types`; the rest is parsed message by message, as the connection
/// parses its read buffer, and each message goes to the code that handles it there: column
/// descriptions become fields, rows are encoded to JSON, errors and command tags are parsed,
/// and rows shaped like the gateway's type lookup teach the registry types (any delimiter,
/// any element) that later descriptions can refer to.
pub fn server_messages(data: &[u8]) {
    let Some((&options, rest)) = data.split_first() else {
        return;
    };
    let mode = if options & 1 == 0 {
        RowMode::Object
    } else {
        RowMode::Array
    };
    let format = if options & 2 == 0 {
        ValueFormat::Json
    } else {
        ValueFormat::Text
    };
    let registry = TypeRegistry::default();
    let mut encoder = RowEncoder::new(mode, format);
    let mut fields: Vec<Field> = Vec::new();
    let mut buf = BytesMut::from(rest);
    let mut out = Vec::new();
    while let Ok(Some(message)) = Message::parse(&mut buf) {
        match message {
            Message::RowDescription(body) => {
                let mut described = body.fields();
                let mut columns = Vec::new();
                while let Ok(Some(field)) = described.next() {
                    columns.push((field.name().to_owned(), field.type_oid()));
                }
                fields = columns
                    .into_iter()
                    .map(|(name, oid)| {
                        let ty = registry.get(oid).unwrap_or_else(|| PgType::unknown(oid));
                        Field::new(name, ty)
                    })
                    .collect();
                out.clear();
                RowEncoder::write_fields(&fields, &mut out);
                assert_json(&out, "field descriptions");
            }
            Message::DataRow(row) => {
                out.clear();
                let encoded = encoder.write_row(&mut out, &fields, &row);
                // Both modes: JSON mode embeds numbers and json only after checking them,
                // so no server text can break or extend the response.
                if encoded.is_ok() {
                    assert_json(&out, "a row");
                    if mode == RowMode::Array {
                        // Valid is not enough: `1,2` in an int4 column would still parse,
                        // as one more element.
                        let row: Vec<serde::de::IgnoredAny> =
                            serde_json::from_slice(&out).expect("a row in array mode is an array");
                        assert_eq!(row.len(), fields.len(), "one element per column");
                    }
                }
                let buffer = row.buffer();
                let text: Result<Vec<Option<String>>, _> = row
                    .ranges()
                    .map(|r| Ok(r.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned())))
                    .collect();
                if let Ok(text) = text {
                    registry.learn(TypeRow::from_text(&text).as_slice());
                }
            }
            Message::CommandComplete(body) => {
                if let Ok(tag) = body.tag() {
                    let _ = CommandTag::parse(tag);
                }
            }
            Message::ErrorResponse(body) => {
                if let Ok(error) = DbError::parse(body.fields()) {
                    let _ = error.is_fatal();
                    let json = ApiError::Database {
                        error: Box::new(error),
                        statement_index: None,
                    }
                    .to_json();
                    assert_json(&serde_json::to_vec(&json).unwrap(), "an error response");
                }
            }
            Message::NoticeResponse(body) => {
                let _ = DbError::parse(body.fields());
            }
            Message::ParameterStatus(body) => {
                let _ = (body.name(), body.value());
            }
            Message::ParameterDescription(body) => {
                let _ = body.parameters().collect::<Vec<u32>>();
            }
            Message::ReadyForQuery(body) => {
                let _ = body.status();
            }
            Message::BackendKeyData(body) => {
                let _ = (body.process_id(), body.secret_key());
            }
            Message::AuthenticationSasl(body) => {
                let _ = body.mechanisms().collect::<Vec<&str>>();
            }
            _ => {}
        }
    }
}

fn assert_json(bytes: &[u8], what: &str) {
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        panic!(
            "{what} is not valid JSON ({e}): {}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// `config`: any text as a config file (its `${VAR}` references filled from its own
/// `KEY=VALUE` lines), as a Postgres URL, and as `KEY=VALUE` lines for the environment-only mode. A config that validates holds only values the rest of the gateway
/// can use without checking again.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = PostgresUrl::parse(&text);
    let vars: HashMap<String, String> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    // `${VAR}` references are filled from the same `KEY=VALUE` lines, so expansion runs with
    // variables that exist (the process environment would leave almost all of them unset).
    let env = |name: &str| {
        vars.get(name)
            .cloned()
            .ok_or(std::env::VarError::NotPresent)
    };
    if let Ok(config) = Config::from_toml_with_env(&text, Path::new("/fuzz"), &env) {
        check_config(&config);
    }
    if let Ok(config) = Config::from_env(&vars) {
        check_config(&config);
    }
}

fn check_config(config: &Config) {
    assert!(!config.upstreams.is_empty());
    let mut ids = std::collections::HashSet::new();
    for tenant in &config.tenants {
        assert!(ids.insert(tenant.id.as_str()), "tenant ids are unique");
        assert!(tenant.upstream < config.upstreams.len());
        assert!(tenant.pool_size >= 1);
        assert!(
            (1..=tenant.pool_size).contains(&tenant.max_transaction_connections),
            "transactions can hold 1..=pool_size connections"
        );
        assert!(tenant.statement_timeout_ms > 0);
        assert!(tenant.transaction_idle_timeout <= tenant.transaction_max);
        assert!(!tenant.api_keys.is_empty());
        assert!(tenant.rate_per_second >= 1 && tenant.burst >= 1);
    }
}

/// `http1_head`: bytes as a client sends them on a plain HTTP/1.1 connection, through the fast
/// path's recognition of an ordinary request (`server::http1_fast`): what it takes must be a
/// whole POST or GET over HTTP/1.1 within the bytes, framed by one matching Content-Length (or
/// none), with nothing left to hyper's judgement (no Transfer-Encoding, Expect, Upgrade, or
/// Connection other than keep-alive).
pub fn http1_head(data: &[u8]) {
    crate::server::http1_fast::fuzz_check(data);
}
