//! The gateway's own per-request work, without network or Postgres, so regressions show up in
//! isolation: parsing a request, lexing its SQL, encoding parameters, encoding a 10-column row.
//!
//! `cargo bench --bench micro`

use std::hint::black_box;

use bytes::{BufMut, BytesMut};
use criterion::{Criterion, criterion_group, criterion_main};
use postgres_protocol::message::backend::Message;
use serde_json::value::RawValue;
use sluice::api::query::QueryRequest;
use sluice::pg::types::builtin;
use sluice::pg::{Field, RowEncoder, RowMode, SqlAnalysis, ValueFormat, params};

const REQUEST: &[u8] = br#"{"sql": "select id, name, email, created_at from users where tenant_id = $1 and status = any($2) and created_at > $3 order by created_at desc limit 50", "params": [42, ["active", "trial"], "2024-01-31T00:00:00Z"], "rowMode": "object"}"#;

/// A DataRow message for 10 typical columns, parsed as the connection would parse it.
fn data_row() -> postgres_protocol::message::backend::DataRowBody {
    let columns: [&[u8]; 10] = [
        b"123456",
        b"Ada Lovelace",
        b"t",
        b"9007199254740993",
        b"12345.678900",
        b"3.141592653589793",
        b"2024-01-31 12:34:56.789+00",
        br#"{"plan": "pro", "seats": [1, 2, 3], "note": "quoted \"text\""}"#,
        b"{math,engines,\"with space\",NULL}",
        b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    ];
    let mut body = BytesMut::new();
    body.put_i16(columns.len() as i16);
    for column in columns {
        body.put_i32(column.len() as i32);
        body.put_slice(column);
    }
    let mut message = BytesMut::new();
    message.put_u8(b'D');
    message.put_i32(body.len() as i32 + 4);
    message.put_slice(&body);
    match Message::parse(&mut message) {
        Ok(Some(Message::DataRow(row))) => row,
        _ => unreachable!("a well-formed DataRow"),
    }
}

fn fields() -> Vec<Field> {
    let types = [23, 25, 16, 20, 1700, 701, 1184, 3802, 1009, 2950];
    let names = [
        "id",
        "name",
        "active",
        "big",
        "amount",
        "ratio",
        "created_at",
        "meta",
        "tags",
        "uuid",
    ];
    names
        .iter()
        .zip(types)
        .map(|(name, oid)| Field::new((*name).into(), builtin(oid).unwrap()))
        .collect()
}

fn benches(c: &mut Criterion) {
    c.bench_function("parse a /v1/query request", |b| {
        b.iter(|| {
            let request: QueryRequest = serde_json::from_slice(black_box(REQUEST)).unwrap();
            black_box(request.params.len())
        })
    });
    let request: QueryRequest = serde_json::from_slice(REQUEST).unwrap();
    c.bench_function("lex the statement", |b| {
        b.iter(|| black_box(SqlAnalysis::of(black_box(&request.sql))))
    });

    let param_types = [builtin(23), builtin(1009), builtin(1184)];
    c.bench_function("encode 3 parameters (int, text[], timestamptz)", |b| {
        let mut out = BytesMut::with_capacity(256);
        b.iter(|| {
            out.clear();
            for (param, ty) in request.params.iter().zip(&param_types) {
                let raw: &RawValue = param;
                params::encode(black_box(raw), ty.as_deref(), &mut out).unwrap();
            }
            black_box(out.len())
        })
    });

    let row = data_row();
    let fields = fields();
    for (name, mode, format) in [
        (
            "encode a 10-column row (object, json types)",
            RowMode::Object,
            ValueFormat::Json,
        ),
        (
            "encode a 10-column row (array, text types)",
            RowMode::Array,
            ValueFormat::Text,
        ),
    ] {
        c.bench_function(name, |b| {
            let mut encoder = RowEncoder::new(mode, format);
            let mut out = Vec::with_capacity(1024);
            b.iter(|| {
                out.clear();
                encoder
                    .write_row(&mut out, &fields, black_box(&row))
                    .unwrap();
                black_box(out.len())
            })
        });
    }
}

criterion_group!(micro, benches);
criterion_main!(micro);
