//! `POST /v1/query` over real HTTP against a real Postgres: results, parameters, options, and
//! every error kind the endpoint can answer.

mod common;

use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USERS: &str = "create table users (id int primary key, name text not null, email text unique, tags text[], meta jsonb);
                     insert into users values (1, 'ada', 'ada@example.com', '{math}', '{\"lang\": \"en\"}'),
                                              (2, 'grace', 'grace@example.com', '{navy,cobol}', null);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returns_rows_fields_command_and_row_count() {
    let (gateway, key, _) = gateway_for(USERS, "").await;
    let reply = gateway
        .client
        .query(
            &key,
            "select id, name, tags, meta from users where id = $1",
            json!([1]),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["command"], "SELECT");
    assert_eq!(body["rowCount"], 1);
    assert_eq!(
        body["fields"],
        json!([
            {"name": "id", "oid": 23, "type": "int4"},
            {"name": "name", "oid": 25, "type": "text"},
            {"name": "tags", "oid": 1009, "type": "_text"},
            {"name": "meta", "oid": 3802, "type": "jsonb"},
        ])
    );
    assert_eq!(
        body["rows"],
        json!([{"id": 1, "name": "ada", "tags": ["math"], "meta": {"lang": "en"}}])
    );
    assert_eq!(reply.headers["content-type"], "application/json");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_modes_and_text_types() {
    let (gateway, key, _) = gateway_for(USERS, "").await;
    let sql = "select id, name, tags, true as ok from users order by id";
    let arrays = gateway
        .client
        .post("/v1/query", &key, &json!({"sql": sql, "rowMode": "array"}))
        .await;
    assert_eq!(
        arrays.rows(),
        vec![
            json!([1, "ada", ["math"], true]),
            json!([2, "grace", ["navy", "cobol"], true])
        ]
    );
    let text = gateway
        .client
        .post(
            "/v1/query",
            &key,
            &json!({"sql": sql, "types": "text", "rowMode": "array"}),
        )
        .await;
    assert_eq!(text.rows()[1], json!(["2", "grace", "{navy,cobol}", "t"]));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_tags_of_writes_and_ddl() {
    let (gateway, key, _) = gateway_for(USERS, "").await;
    let c = &gateway.client;
    let insert = c
        .query(
            &key,
            "insert into users (id, name) values ($1, $2), ($3, $4)",
            json!([3, "x", 4, "y"]),
        )
        .await;
    assert_eq!(
        (
            insert.json()["command"].clone(),
            insert.json()["rowCount"].clone()
        ),
        (json!("INSERT"), json!(2))
    );
    let update = c
        .query(
            &key,
            "update users set name = upper(name) where id > $1",
            json!([2]),
        )
        .await;
    assert_eq!(update.json()["rowCount"], 2);
    let returning = c
        .query(
            &key,
            "delete from users where id = $1 returning name",
            json!([4]),
        )
        .await;
    assert_eq!(returning.json()["command"], "DELETE");
    assert_eq!(returning.rows(), vec![json!({"name": "Y"})]);
    let ddl = c.query(&key, "create table t2 (a int)", json!([])).await;
    assert_eq!(
        ddl.json(),
        json!({"fields": [], "rows": [], "command": "CREATE", "rowCount": null})
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_are_bound_not_interpolated() {
    let (gateway, key, _) = gateway_for(USERS, "").await;
    let c = &gateway.client;
    // An injection attempt is just a string.
    let evil = "1; drop table users; --";
    let reply = c.query(&key, "select $1::text as v", json!([evil])).await;
    assert_eq!(reply.rows(), vec![json!({"v": evil})]);
    assert_eq!(
        c.query(&key, "select count(*) from users", json!([]))
            .await
            .rows()[0]["count"],
        "2"
    );
    // Numbers keep their exact text; strings carry literals of any type.
    let reply = c
        .query(
            &key,
            "select $1::numeric as n, $2::int8 as big, $3::date as d, $4::bytea as b, $5::bool as t, $6::int as nothing",
            json!([12345678901234567890.000000001_f64, 9007199254740993_u64, "2024-01-31", "\\x0102", true, null]),
        )
        .await;
    let row = &reply.rows()[0];
    assert_eq!(row["big"], "9007199254740993");
    assert_eq!(row["d"], "2024-01-31");
    assert_eq!(row["b"], "\\x0102");
    assert_eq!(row["t"], true);
    assert_eq!(row["nothing"], json!(null));
    // Exact decimal text survives (sent raw, not through f64).
    let exact = c
        .request(
            Method::POST,
            "/v1/query",
            &[("authorization", &format!("Bearer {key}"))],
            r#"{"sql": "select $1::numeric as n", "params": [12345678901234567890.000000001]}"#,
        )
        .await;
    assert_eq!(exact.rows()[0]["n"], "12345678901234567890.000000001");
    // Arrays: a literal for array placeholders, JSON text for json/jsonb ones.
    let reply = c
        .query(
            &key,
            "select $1::int[] as ints, $2::text[] as texts, $3::jsonb as doc, $4::int[] as grid",
            json!([[1, 2, null], ["a\"b", "c,d", "NULL"], [1, {"k": "v"}], [[1, 2], [3, 4]]]),
        )
        .await;
    let row = &reply.rows()[0];
    assert_eq!(row["ints"], json!([1, 2, null]));
    assert_eq!(row["texts"], json!(["a\"b", "c,d", "NULL"]));
    assert_eq!(row["doc"], json!([1, {"k": "v"}]));
    assert_eq!(row["grid"], json!([[1, 2], [3, 4]]));
    // Objects are JSON text.
    let reply = c
        .query(&key, "select $1::jsonb -> 'a' as a", json!([{"a": [true]}]))
        .await;
    assert_eq!(reply.rows()[0]["a"], json!([true]));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_statements_reuse_the_prepared_statement() {
    let (gateway, key, db) = gateway_for("", "pool_size = 1").await;
    for i in 0..5 {
        let reply = gateway
            .client
            .query(&key, "select $1::int + 1 as n", json!([i]))
            .await;
        assert_eq!(reply.rows()[0]["n"], i + 1);
    }
    // One connection, one statement prepared once: pg_prepared_statements of that backend
    // is only visible from inside it, so ask through the gateway.
    let reply = gateway
        .client
        .query(&key, "select count(*) as n from pg_prepared_statements where statement = 'select $1::int + 1 as n'", json!([]))
        .await;
    assert_eq!(reply.rows()[0]["n"], "1");
    let _ = db;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_changed_under_a_cached_statement_is_prepared_again() {
    let (gateway, key, _) = gateway_for(
        "create table t (a int); insert into t values (1);",
        "pool_size = 1",
    )
    .await;
    let c = &gateway.client;
    assert_eq!(
        c.query(&key, "select * from t", json!([])).await.rows(),
        vec![json!({"a": 1})]
    );
    c.query(
        &key,
        "alter table t add column b text default 'x'",
        json!([]),
    )
    .await;
    assert_eq!(
        c.query(&key, "select * from t", json!([])).await.rows(),
        vec![json!({"a": 1, "b": "x"})]
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_ms_sets_the_statement_timeout_up_to_the_tenants_maximum() {
    let (gateway, key, _) = gateway_for("", "statement_timeout_ms = 3000").await;
    let c = &gateway.client;
    let reply = c
        .post(
            "/v1/query",
            &key,
            &json!({"sql": "select pg_sleep(2)", "timeoutMs": 100}),
        )
        .await;
    assert_status(&reply, StatusCode::BAD_REQUEST, "database");
    assert_eq!(reply.json()["error"]["code"], "57014");
    // The next statement on the same connection runs under the tenant's default again.
    let reply = c
        .query(
            &key,
            "select current_setting('statement_timeout') as t",
            json!([]),
        )
        .await;
    assert_eq!(reply.rows()[0]["t"], "3s");
    // Above the tenant's maximum, the maximum applies.
    let reply = c
        .post(
            "/v1/query",
            &key,
            &json!({"sql": "select pg_sleep(4)", "timeoutMs": 60000}),
        )
        .await;
    assert_eq!(reply.json()["error"]["code"], "57014", "{}", reply.text);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_errors_carry_sqlstate_position_and_fields() {
    let (gateway, key, _) = gateway_for(USERS, "").await;
    let c = &gateway.client;
    let syntax = c.query(&key, "select * fro users", json!([])).await;
    assert_status(&syntax, StatusCode::BAD_REQUEST, "database");
    let error = &syntax.json()["error"];
    assert_eq!(error["code"], "42601");
    assert_eq!(error["position"], 10);
    assert_eq!(error["severity"], "ERROR");
    let unique = c
        .query(
            &key,
            "insert into users (id, name, email) values (9, 'x', $1)",
            json!(["ada@example.com"]),
        )
        .await;
    let error = &unique.json()["error"];
    assert_eq!(error["code"], "23505");
    assert_eq!(error["constraint"], "users_email_key");
    assert_eq!(error["table"], "users");
    assert_eq!(error["schema"], "public");
    assert!(error["detail"].as_str().unwrap().contains("already exists"));
    let not_null = c
        .query(&key, "insert into users (id) values (10)", json!([]))
        .await;
    assert_eq!(not_null.json()["error"]["column"], "name");
    let bad_input = c.query(&key, "select $1::int", json!(["abc"])).await;
    assert_eq!(bad_input.json()["error"]["code"], "22P02");
    // The failed statements left the connection usable.
    assert_eq!(
        c.query(&key, "select 1 as one", json!([])).await.rows(),
        vec![json!({"one": 1})]
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_before_reaching_postgres() {
    let (gateway, key, _) = gateway_for("", "").await;
    let c = &gateway.client;
    let auth = format!("Bearer {key}");
    let headers = [("authorization", auth.as_str())];
    let raw = |body: &'static str| c.request(Method::POST, "/v1/query", &headers, body);
    let cases: Vec<(Reply, &str)> = vec![
        (raw("{not json").await, "invalid request body"),
        (raw("").await, "empty"),
        (raw("[1,2]").await, "invalid type"),
        (
            raw(r#"{"sql": "select 1", "parms": []}"#).await,
            "unknown field `parms`",
        ),
        (raw(r#"{"sql": 42}"#).await, "invalid type: integer `42`"),
        (
            raw(r#"{"sql": "select 1", "rowMode": "table"}"#).await,
            "unknown variant `table`",
        ),
        (
            raw(r#"{"sql": "select 1", "timeoutMs": -5}"#).await,
            "invalid value",
        ),
        (
            raw(r#"{"sql": "select 1", "timeoutMs": 0}"#).await,
            "timeoutMs",
        ),
        (raw(r#"{"params": []}"#).await, "missing field `sql`"),
        (raw(r#"{"sql": "  -- nothing "}"#).await, "empty"),
        (raw(r#"{"sql": "select 1; select 2"}"#).await, "/v1/batch"),
        (
            raw(r#"{"sql": "select $1, $2", "params": [1]}"#).await,
            "parameter",
        ),
        (
            raw(r#"{"sql": "select 1", "params": [1]}"#).await,
            "parameter",
        ),
    ];
    for (reply, expected) in cases {
        assert_status(&reply, StatusCode::BAD_REQUEST, "bad_request");
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            message.contains(expected),
            "expected {expected:?} in {message:?}"
        );
    }
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_required_and_admin_keys_cannot_run_sql() {
    let (gateway, key, _db, admin) = gateway_with_admin("", "").await;
    let c = &gateway.client;
    let missing = c
        .request(Method::POST, "/v1/query", &[], r#"{"sql":"select 1"}"#)
        .await;
    assert_status(&missing, StatusCode::UNAUTHORIZED, "unauthorized");
    let wrong = c.query("not-a-key", "select 1", json!([])).await;
    assert_status(&wrong, StatusCode::UNAUTHORIZED, "unauthorized");
    let basic = c
        .request(
            Method::POST,
            "/v1/query",
            &[("authorization", "Basic YTpi")],
            r#"{"sql":"select 1"}"#,
        )
        .await;
    assert_status(&basic, StatusCode::UNAUTHORIZED, "unauthorized");
    let admin_reply = c.query(&admin, "select 1", json!([])).await;
    assert_status(&admin_reply, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(
        c.query(&key, "select 1 as one", json!([]))
            .await
            .rows()
            .len(),
        1
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_refused_while_reading() {
    let (gateway, key, _) = gateway_for("", "").await;
    // Declared too large: refused from the header.
    let big = format!(
        r#"{{"sql": "select $1::text", "params": ["{}"]}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let reply = gateway
        .client
        .request(
            Method::POST,
            "/v1/query",
            &[("authorization", &format!("Bearer {key}"))],
            big.clone(),
        )
        .await;
    assert_status(&reply, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // Chunked (no Content-Length): refused as the limit is crossed, before the body ends.
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let head = format!(
        "POST /v1/query HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut refused = false;
    for _ in 0..40 {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        if stream.write_all(&frame).await.is_err() {
            refused = true;
            break;
        }
    }
    if !refused {
        refused = stream.write_all(b"0\r\n\r\n").await.is_err();
    }
    // Read until the answer is in (the connection stays open: the body was read to its end).
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&response).contains("payload_too_large") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let response = String::from_utf8_lossy(&response);
    assert!(
        refused || response.starts_with("HTTP/1.1 413"),
        "{response}"
    );
    if !response.is_empty() {
        assert!(response.contains("payload_too_large"), "{response}");
    }
    still_serves(&gateway, &key).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_over_the_limit_answer_response_too_large() {
    let db = database("").await;
    let (key, hash) = key("acme");
    let toml =
        config(&db, &hash, "", "").replace("[server]", "[server]\nmax_response_bytes = 100000");
    let gateway = Gateway::start(&toml).await;
    let reply = gateway
        .client
        .query(
            &key,
            "select repeat('x', 1000) from generate_series(1, 1000)",
            json!([]),
        )
        .await;
    assert_status(&reply, StatusCode::PAYLOAD_TOO_LARGE, "response_too_large");
    assert_eq!(reply.json()["error"]["limit"], 100000);
    // The statement ran to completion (it was not cancelled) and the connection is reusable.
    let ok = gateway
        .client
        .query(
            &key,
            "select count(*) from generate_series(1, 10)",
            json!([]),
        )
        .await;
    assert_eq!(ok.rows()[0]["count"], "10");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_methods_and_request_ids() {
    let (gateway, key, _) = gateway_for("", "").await;
    let c = &gateway.client;
    assert_status(&c.get("/nope").await, StatusCode::NOT_FOUND, "not_found");
    let get_query = c.get("/v1/query").await;
    assert_status(
        &get_query,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    assert_eq!(get_query.headers["allow"], "POST");
    let health = c.get("/healthz").await;
    assert_eq!(
        (health.status, health.json()["status"].clone()),
        (200, json!("ok"))
    );
    assert_eq!(c.get("/readyz").await.status, 200);
    // Every response carries a request id; the client's own is echoed.
    let mine = c
        .request(
            Method::POST,
            "/v1/query",
            &[
                ("authorization", &format!("Bearer {key}")),
                ("x-request-id", "req-123"),
            ],
            r#"{"sql":"select 1"}"#,
        )
        .await;
    assert_eq!(mine.headers["x-request-id"], "req-123");
    let generated = c.query(&key, "select 1", json!([])).await;
    assert_eq!(
        generated.headers["keep-alive"], "timeout=10",
        "clients learn the idle timeout"
    );
    assert_eq!(generated.headers["x-request-id"].len(), 32);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_is_refused_without_breaking_the_connection() {
    let (gateway, key, _) = gateway_for("create table t (a int);", "pool_size = 1").await;
    let c = &gateway.client;
    for sql in [
        "copy t from stdin",
        "COPY (select 1) TO STDOUT WITH (FORMAT csv)",
    ] {
        let reply = c.query(&key, sql, json!([])).await;
        assert_status(&reply, StatusCode::BAD_REQUEST, "bad_request");
        assert!(
            reply.text.contains("not supported over HTTP"),
            "{}",
            reply.text
        );
    }
    assert_eq!(
        c.query(&key, "select 2 as two", json!([])).await.rows(),
        vec![json!({"two": 2})]
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_start_with_the_documented_settings() {
    let (gateway, key, _) = gateway_for("", "").await;
    let reply = gateway
        .client
        .query(
            &key,
            "select current_setting('DateStyle') as ds, current_setting('IntervalStyle') as i, \
             current_setting('TimeZone') as tz, current_setting('application_name') as app",
            json!([]),
        )
        .await;
    assert_eq!(
        reply.rows()[0],
        json!({"ds": "ISO, MDY", "i": "postgres", "tz": "UTC", "app": "sluice/acme"})
    );
    gateway.stop().await;
}
