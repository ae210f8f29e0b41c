//! Type fidelity: every value read through the gateway equals what Postgres itself says.
//!
//! The oracle is Postgres: in `types: "text"` mode each value must equal the text Postgres sends
//! any client for it (read directly, with another client and protocol); in `types: "json"` mode
//! it must follow API.md's table, derived here from that same text (scalars) or written out by
//! hand (arrays, which also prove dimensions and NULLs). Each column's `oid` and `type` must be
//! `pg_typeof(value)` — for a domain, its base type, which is what Postgres reports.

mod common;

use common::*;
use serde_json::{Value, json};

/// Types the values below need: extensions with run-time OIDs, an enum, a domain, a composite.
const SETUP: &str = "
    create extension citext; create extension hstore; create extension ltree; create extension cube;
    create type mood as enum ('sad', 'ok', 'happy');
    create domain posint as int check (value > 0);
    create type complex as (re float8, im float8);
    create type labelled as (label text, at timestamptz);
";

/// Scalar values: the JSON expectation follows from the text output by API.md's table.
const SCALARS: &[&str] = &[
    // bool
    "true",
    "false",
    // integers
    "0::int2",
    "(-32768)::int2",
    "32767::int2",
    "0::int4",
    "(-2147483648)::int4",
    "2147483647::int4",
    "42",
    "0::int8",
    "(-9223372036854775808)::int8",
    "9223372036854775807::int8",
    "9007199254740993::int8",
    "4294967295::oid",
    "1259::oid",
    // floats
    "1.5::float4",
    "-0.1::float4",
    "3.4028235e38::float4",
    "1e-45::float4",
    "'NaN'::float4",
    "'Infinity'::float4",
    "'-Infinity'::float4",
    "0.1::float8",
    "-0::float8",
    "1e100::float8",
    "1.7976931348623157e308::float8",
    "5e-324::float8",
    "123456789.123456789::float8",
    "'NaN'::float8",
    "'-Infinity'::float8",
    "pi()",
    // numeric
    "0::numeric",
    "1.50::numeric",
    "-0.0000000001::numeric",
    "'NaN'::numeric",
    "'Infinity'::numeric",
    "'-Infinity'::numeric",
    "123456789012345678901234567890.123456789012345678901234567890::numeric",
    "1e-20::numeric(30,25)",
    "power(2::numeric, 200)",
    // money
    "12.34::money",
    "(-1000000.5)::money",
    // text-like
    "''",
    "'plain'",
    "'quote \" backslash \\ tab \t newline \n end'",
    "E'\\x01\\x1f control'",
    "'unicode: ü € 😀 中文'",
    "'it''s'",
    "'{\"looks\": \"like json\"}'::text",
    "'abc'::varchar(5)",
    "'ab'::char(4)",
    "'x'::\"char\"",
    "'name_type'::name",
    "'NULL'",
    "repeat('long ', 200)",
    // bytea
    "'\\x'::bytea",
    "'\\x0001ff'::bytea",
    "'hello'::bytea",
    "decode('DEADBEEF', 'hex')",
    // uuid
    "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid",
    "'00000000-0000-0000-0000-000000000000'::uuid",
    // date and time
    "'2024-01-31'::date",
    "'0001-01-01 BC'::date",
    "'infinity'::date",
    "'-infinity'::date",
    "'5874897-12-31'::date",
    "'12:34:56'::time",
    "'12:34:56.789012'::time",
    "'24:00:00'::time",
    "'12:34:56+05:30'::timetz",
    "'23:59:59.999999-12'::timetz",
    "'2024-01-31 12:34:56'::timestamp",
    "'2024-01-31 12:34:56.123456'::timestamp",
    "'1999-12-31 23:59:59.5'::timestamp",
    "'infinity'::timestamp",
    "'2000-01-01 00:00:00 BC'::timestamp",
    "'294276-12-31 23:59:59'::timestamp",
    "'2024-01-31 12:34:56+00'::timestamptz",
    "'2024-06-30 23:59:59.999999-07'::timestamptz",
    "'2024-01-31 12:34:56.1+05:45'::timestamptz",
    "'-infinity'::timestamptz",
    "'1900-01-01 00:00:00+01:23:45'::timestamptz",
    // intervals
    "'1 day'::interval",
    "'1 year 2 mons 3 days 04:05:06.789'::interval",
    "'-1 day +02:03'::interval",
    "'0'::interval",
    "'1000000 hours'::interval",
    "'-178000000 years'::interval",
    "'1.5 seconds'::interval",
    // network
    "'192.168.0.1'::inet",
    "'192.168.0.1/24'::inet",
    "'::1'::inet",
    "'2001:db8::ff00:42:8329/64'::inet",
    "'10.0.0.0/8'::cidr",
    "'2001:db8::/32'::cidr",
    "'08:00:2b:01:02:03'::macaddr",
    "'08:00:2b:01:02:03:04:05'::macaddr8",
    // bit strings
    "B'1010'",
    "B'1010'::bit(8)",
    "B''::varbit",
    "B'1111000011110000'::varbit(20)",
    // geometric
    "'(1,2)'::point",
    "'(-1.5,2.25)'::point",
    "'{1,-1,0}'::line",
    "'[(0,0),(1,1)]'::lseg",
    "'((0,0),(1,1))'::box",
    "'((0,0),(1,1),(2,0))'::path",
    "'[(0,0),(1,1),(2,0)]'::path",
    "'((0,0),(0,1),(1,1),(1,0))'::polygon",
    "'<(1,1),2.5>'::circle",
    // ranges and multiranges
    "'[1,10)'::int4range",
    "'empty'::int4range",
    "'(,5]'::int8range",
    "'[1.5,2.5]'::numrange",
    "'[2024-01-01,2024-02-01)'::daterange",
    "'[2024-01-01 10:00,2024-01-01 11:00)'::tsrange",
    "'[2024-01-01 10:00+00,)'::tstzrange",
    "'{[1,3), [5,7)}'::int4multirange",
    "'{}'::datemultirange",
    "'{[1.1,2.2]}'::nummultirange",
    // json
    "'{\"a\": [1, 2.5, \"x\", null, true]}'::json",
    "'  {\"spaces\" :  1 }  '::json",
    "'[]'::jsonb",
    "'{\"b\": 1, \"a\": {\"nested\": [false]}}'::jsonb",
    "'\"just a string\"'::jsonb",
    "'null'::jsonb",
    "'123.4500'::jsonb",
    "'{\"unicode\": \"\\u00fc \\ud83d\\ude00\"}'::jsonb",
    "'{\"dup\": 1, \"dup\": 2}'::json",
    // xml and text search
    "'<a href=\"x\">text &amp; more</a>'::xml",
    "to_tsvector('english', 'The quick brown foxes')",
    "'fat & (rat | cat)'::tsquery",
    "'a:1 b:2'::tsvector",
    // system and misc types
    "'pg_class'::regclass",
    "'int4'::regtype",
    "'now'::regproc",
    "'16/B374D848'::pg_lsn",
    "'10:20:10,14,15'::pg_snapshot",
    "'(0,1)'::tid",
    "'1234'::xid",
    "'1 2'::int2vector",
    "'1 2 3'::oidvector",
    "'english'::regconfig",
    "txid_current_if_assigned()",
    "'2024-01-31'::date - '2023-01-31'::date",
    // enums, domains, composites
    "'happy'::mood",
    "'sad'::mood",
    "5::posint",
    "row(1.5, -2)::complex",
    "row('a \"quoted\", label', '2024-01-31 00:00:00+00')::labelled",
    "row(1, 'two', null, true)",
    "row()",
    // extensions (OIDs known only at run time)
    "'MiXeD Case'::citext",
    "'a=>1, b=>NULL, \"key with space\"=>\"value, with comma\"'::hstore",
    "'Top.Science.Astronomy'::ltree",
    "'Top.*{1,2}.Astronomy'::lquery",
    "'(1,2),(3,4)'::cube",
    "'(1.5, -2)'::cube",
    // NULLs of several types
    "null::int",
    "null::text",
    "null::jsonb",
    "null::timestamptz",
    "null::int[]",
    "null::mood",
    "null::hstore",
];

/// Arrays: the JSON expectation, written out (dimensions, NULLs and element conversions).
const ARRAYS: &[(&str, &str)] = &[
    ("array[1, 2, 3]", "[1, 2, 3]"),
    ("array[]::int[]", "[]"),
    ("array[1, null, 3]", "[1, null, 3]"),
    ("array[[1, 2], [3, 4]]", "[[1, 2], [3, 4]]"),
    (
        "array[[[1], [2]], [[3], [null::int]]]",
        "[[[1], [2]], [[3], [null]]]",
    ),
    ("'[0:2]={7,8,9}'::int[]", "[7, 8, 9]"),
    ("array[true, false, null]", "[true, false, null]"),
    (
        "array[9007199254740993, -1]::int8[]",
        "[\"9007199254740993\", \"-1\"]",
    ),
    ("array[1.50, 'NaN']::numeric[]", "[\"1.50\", \"NaN\"]"),
    (
        "array[1.5, 'NaN', '-Infinity']::float8[]",
        "[1.5, \"NaN\", \"-Infinity\"]",
    ),
    ("array[0.25]::float4[]", "[0.25]"),
    (
        "array['a', 'b c', '', null, 'NULL', 'null']",
        "[\"a\", \"b c\", \"\", null, \"NULL\", \"null\"]",
    ),
    (
        "array['quote \"', 'back\\slash', 'comma,', '{brace}']",
        "[\"quote \\\"\", \"back\\\\slash\", \"comma,\", \"{brace}\"]",
    ),
    (
        "array[['a', null], ['c', 'd']]",
        "[[\"a\", null], [\"c\", \"d\"]]",
    ),
    (
        "array['{\"a\": 1}', '[1, 2]', 'null', '\"s\"']::jsonb[]",
        "[{\"a\": 1}, [1, 2], null, \"s\"]",
    ),
    ("array['{\"x\": [true]}']::json[]", "[{\"x\": [true]}]"),
    (
        "array['2024-01-31', 'infinity']::date[]",
        "[\"2024-01-31\", \"infinity\"]",
    ),
    (
        "array['2024-01-31 12:00:00.5+00']::timestamptz[]",
        "[\"2024-01-31 12:00:00.5+00\"]",
    ),
    (
        "array['1 day 02:00', '-3 mons']::interval[]",
        "[\"1 day 02:00:00\", \"-3 mons\"]",
    ),
    ("array['\\x00ff'::bytea, null]", "[\"\\\\x00ff\", null]"),
    (
        "array['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11']::uuid[]",
        "[\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\"]",
    ),
    (
        "array['10.0.0.1/8', '::1']::inet[]",
        "[\"10.0.0.1/8\", \"::1\"]",
    ),
    ("array[12.5]::money[]", "[\"$12.50\"]"),
    ("array[B'101', B'0']::varbit[]", "[\"101\", \"0\"]"),
    ("array['(1,2)', '(3,4)']::point[]", "[\"(1,2)\", \"(3,4)\"]"),
    (
        "array['((0,0),(1,1))', '((2,2),(3,3))']::box[]",
        "[\"(1,1),(0,0)\", \"(3,3),(2,2)\"]",
    ),
    ("array['<(1,1),2>']::circle[]", "[\"<(1,1),2>\"]"),
    (
        "array['[1,3)', 'empty']::int4range[]",
        "[\"[1,3)\", \"empty\"]",
    ),
    (
        "array['{[1,2), [4,5)}']::int4multirange[]",
        "[\"{[1,2),[4,5)}\"]",
    ),
    (
        "array['happy', 'sad', null]::mood[]",
        "[\"happy\", \"sad\", null]",
    ),
    ("array[1, 2]::posint[]", "[1, 2]"),
    ("array[row(1, 2)::complex, null]", "[\"(1,2)\", null]"),
    ("array['Ab', 'cD']::citext[]", "[\"Ab\", \"cD\"]"),
    ("array['a=>1'::hstore]", "[\"\\\"a\\\"=>\\\"1\\\"\"]"),
    ("array['a.b', 'c']::ltree[]", "[\"a.b\", \"c\"]"),
    (
        "array[array[1.5, 2], array[null, 4]]::float8[]",
        "[[1.5, 2], [null, 4]]",
    ),
    ("array['t', 'f']::bool[]", "[true, false]"),
    ("array[1, 2]::int2[]", "[1, 2]"),
    ("array[1259]::oid[]", "[1259]"),
    ("array['x', 'y']::\"char\"[]", "[\"x\", \"y\"]"),
    ("array['<a/>']::xml[]", "[\"<a/>\"]"),
    ("array['a:1']::tsvector[]", "[\"'a':1\"]"),
    ("'{}'::text[]", "[]"),
    (
        "'{{a,b},{c,NULL}}'::text[]",
        "[[\"a\", \"b\"], [\"c\", null]]",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_reads_back_as_postgres_says() {
    assert!(
        SCALARS.len() + ARRAYS.len() >= 150,
        "the table must cover at least 150 values"
    );
    let (gateway, key, db) = gateway_for(SETUP, "").await;
    let direct = direct(&db).await;
    direct
        .batch_execute(
            "set DateStyle = 'ISO, MDY'; set IntervalStyle = postgres; set TimeZone = 'UTC'",
        )
        .await
        .unwrap();
    let expressions: Vec<&str> = SCALARS
        .iter()
        .copied()
        .chain(ARRAYS.iter().map(|(e, _)| *e))
        .collect();

    // The oracle: each value's text output as Postgres sends it to any client (read here with
    // another client and the simple query protocol), and its type as the wire reports it
    // (a domain is reported as its base type). Note `(value)::text` is not the oracle: casts to
    // text differ from the output function for bool (`true`), bpchar (trims) and inet (`/32`).
    let mut oracle = Vec::new();
    for expression in &expressions {
        let text = match direct.simple_query(&format!("select {expression}")).await {
            Ok(messages) => messages.into_iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
                _ => None,
            }),
            Err(e) => panic!("{expression}: {e:?}"),
        }
        .expect("one row");
        let row = direct
            .query_one(
                &format!(
                    "select b.oid::int8, b.typname::text from (select {expression} as v) s, pg_type t, pg_type b \
                     where t.oid = pg_typeof(s.v) and b.oid = case when t.typtype = 'd' then t.typbasetype else t.oid end"
                ),
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("{expression}: {e:?}"));
        oracle.push((text, row.get::<_, i64>(0), row.get::<_, String>(1)));
    }

    // Through the gateway: all values as columns of one row, in both modes.
    let select = format!(
        "select {}",
        expressions
            .iter()
            .enumerate()
            .map(|(i, e)| format!("{e} as c{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let text = gateway
        .client
        .post(
            "/v1/query",
            &key,
            &json!({"sql": select, "types": "text", "rowMode": "array"}),
        )
        .await;
    let typed = gateway
        .client
        .post(
            "/v1/query",
            &key,
            &json!({"sql": select, "rowMode": "array"}),
        )
        .await;
    let (text_body, typed_body) = (text.json(), typed.json());
    let text_row = text.rows()[0].as_array().unwrap().clone();
    let typed_row = typed.rows()[0].as_array().unwrap().clone();

    let mut failures = Vec::new();
    for (i, expression) in expressions.iter().enumerate() {
        let (text_value, oid, type_name) = &oracle[i];
        let field = &text_body["fields"][i];
        if field["oid"] != json!(oid) || field["type"] != json!(type_name) {
            failures.push(format!(
                "{expression}: field {field} but pg_typeof says {oid} {type_name}"
            ));
        }
        assert_eq!(typed_body["fields"][i], *field);
        let expected_text = text_value.as_ref().map_or(Value::Null, |t| json!(t));
        if text_row[i] != expected_text {
            failures.push(format!(
                "{expression}: text mode gave {} but ::text is {expected_text}",
                text_row[i]
            ));
        }
        let expected_json = match ARRAYS.iter().find(|(e, _)| e == expression) {
            Some((_, json)) => serde_json::from_str(json).unwrap(),
            None => json_of_scalar(type_name, text_value.as_deref()),
        };
        if !json_equal(&typed_row[i], &expected_json) {
            failures.push(format!(
                "{expression}: json mode gave {} but expected {expected_json}",
                typed_row[i]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} values differ:\n{}",
        failures.len(),
        expressions.len(),
        failures.join("\n")
    );
    gateway.stop().await;
}

/// API.md's table for scalars, from Postgres's own text output.
fn json_of_scalar(type_name: &str, text: Option<&str>) -> Value {
    let Some(text) = text else { return Value::Null };
    match type_name {
        "bool" => json!(text == "t"),
        "int2" | "int4" | "oid" => serde_json::from_str(text).unwrap(),
        "int8" | "numeric" => json!(text),
        "float4" | "float8" => match text {
            "NaN" | "Infinity" | "-Infinity" => json!(text),
            _ => json!(text.parse::<f64>().unwrap()),
        },
        "json" | "jsonb" => serde_json::from_str(text).unwrap(),
        _ => json!(text),
    }
}

/// Equality where numbers compare by value (the gateway passes Postgres's digits through, so
/// `1.5e+100` and `1.5e100` are the same number).
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_of_every_kind_round_trip() {
    let (gateway, key, _) = gateway_for(SETUP, "").await;
    let cases = [
        (
            "select $1::timestamptz as v",
            json!("2024-01-31T12:00:00.5Z"),
            json!("2024-01-31 12:00:00.5+00"),
        ),
        (
            "select $1::interval as v",
            json!("P1DT2H"),
            json!("1 day 02:00:00"),
        ),
        (
            "select $1::uuid as v",
            json!("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"),
            json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ),
        ("select $1::mood as v", json!("ok"), json!("ok")),
        ("select $1::citext = 'ABC' as v", json!("abc"), json!(true)),
        ("select $1::hstore -> 'k' as v", json!("k=>v"), json!("v")),
        ("select $1::ltree as v", json!("a.b.c"), json!("a.b.c")),
        (
            "select $1::mood[] as v",
            json!(["sad", null]),
            json!(["sad", null]),
        ),
        (
            "select $1::citext[] as v",
            json!(["x,y", "z"]),
            json!(["x,y", "z"]),
        ),
        (
            "select $1::point[] as v",
            json!(["(1,2)"]),
            json!(["(1,2)"]),
        ),
        (
            "select $1::box[] as v",
            json!(["((0,0),(1,1))", "((2,2),(3,3))"]),
            json!(["(1,1),(0,0)", "(3,3),(2,2)"]),
        ),
        ("select $1::int4range as v", json!("[1,5)"), json!("[1,5)")),
        (
            "select $1::bytea as v",
            json!("\\xdeadbeef"),
            json!("\\xdeadbeef"),
        ),
        ("select $1::float8 as v", json!(1e300), json!(1e300)),
        (
            "select $1::int8[] as v",
            json!([9007199254740993_u64]),
            json!(["9007199254740993"]),
        ),
        (
            "select $1::jsonb[] as v",
            json!([{"a": 1}, "[2]"]),
            json!([{"a": 1}, [2]]),
        ),
        (
            "select $1::text as v",
            json!("\u{1F600} ü \\ \" '"),
            json!("\u{1F600} ü \\ \" '"),
        ),
        ("select $1::complex as v", json!("(1,2)"), json!("(1,2)")),
    ];
    for (sql, param, expected) in cases {
        let reply = gateway.client.query(&key, sql, json!([param])).await;
        assert_eq!(reply.status, 200, "{sql}: {}", reply.text);
        assert!(
            json_equal(&reply.rows()[0]["v"], &expected),
            "{sql}: got {} expected {expected}",
            reply.rows()[0]["v"]
        );
    }
    gateway.stop().await;
}
