//! `POST /sql`, Neon's SQL-over-HTTP protocol (issue 13), over real HTTP against a real
//! Postgres: the fields and values Neon's driver reads, its headers, its error bodies, the
//! connection-string credentials, and every promise of `/v1/query` kept on this route too (the
//! connection cap under a burst, 429/503 with `Retry-After`, the failed-authentication limit,
//! hygiene, cancel on disconnect, metrics). The real driver and ORMs run in sdk/compat.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

const POSTS: &str = "create table posts (id serial primary key, title varchar(40) not null unique, views int8 not null default 0, tags text[] not null default '{}', meta jsonb, score numeric(6,2));
                     insert into posts (title, views, tags, meta, score) values ('first', 9007199254740993, '{a,b}', '{\"k\": [1, 2]}', 1.50), ('second', 2, '{}', null, null);";

/// The connection string a Neon app would carry: user = tenant, password = API key.
fn connection_string(user: &str, key: &str, db: &str) -> String {
    format!("postgresql://{user}:{key}@gateway.example/{db}?sslmode=require")
}

/// `POST /sql` with these headers and body.
async fn sql(gateway: &Gateway, headers: &[(&str, &str)], body: &Value) -> Reply {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    gateway
        .client
        .request(
            Method::POST,
            "/sql",
            &all,
            serde_json::to_vec(body).unwrap(),
        )
        .await
}

/// A gateway in front of a fresh database and the connection string to reach it.
async fn neon_gateway(setup: &str, tenant_extra: &str) -> (Gateway, String, String, String) {
    let (gateway, key, db) = gateway_for(setup, tenant_extra).await;
    let cs = connection_string("acme", &key, &db);
    (gateway, key, db, cs)
}

fn assert_neon_error(reply: &Reply, status: StatusCode, kind: &str) -> Value {
    assert_eq!(reply.status, status.as_u16(), "{}", reply.text);
    let body = reply.json();
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "every error carries a message: {}",
        reply.text
    );
    assert_eq!(body["kind"], kind, "{}", reply.text);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_answers_the_fields_rows_and_command_neons_driver_reads() {
    let (gateway, _, db, cs) = neon_gateway(POSTS, "").await;
    let reply = sql(
        &gateway,
        &[("neon-connection-string", &cs)],
        &json!({"query": "select id, title, views, tags, meta, score, 1.5::float8 as f from posts where id = $1", "params": [1]}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let body = reply.json();
    let table_oid: i64 = direct(&db)
        .await
        .query_one("select 'posts'::regclass::oid::int8", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        body["fields"][1],
        json!({"name": "title", "dataTypeID": 1043, "tableID": table_oid, "columnID": 2,
               "dataTypeSize": -1, "dataTypeModifier": 44, "format": "text"})
    );
    assert_eq!(body["fields"][0]["dataTypeSize"], 4);
    assert_eq!(
        body["fields"][6]["tableID"], 0,
        "an expression is no table's column"
    );
    // Without Neon-Raw-Text-Output, values are converted as Neon converts them.
    assert_eq!(
        body["rows"],
        json!([{"id": 1, "title": "first", "views": "9007199254740993", "tags": ["a", "b"],
                "meta": {"k": [1, 2]}, "score": "1.50", "f": 1.5}])
    );
    assert_eq!(body["command"], "SELECT");
    assert_eq!(body["rowCount"], 1);
    assert_eq!(body["rowAsArray"], false);

    let insert = sql(
        &gateway,
        &[("neon-connection-string", &cs)],
        &json!({"query": "insert into posts (title) values ($1), ($2)", "params": ["a", "b"]}),
    )
    .await;
    let body = insert.json();
    assert_eq!(
        (
            &body["command"],
            &body["rowCount"],
            &body["rows"],
            &body["fields"]
        ),
        (&json!("INSERT"), &json!(2), &json!([]), &json!([]))
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_text_and_array_mode_apply_only_when_exactly_true() {
    let (gateway, _, _, cs) = neon_gateway(POSTS, "").await;
    let query = json!({"query": "select id, tags, meta, null::text as n from posts order by id"});
    let raw = sql(
        &gateway,
        &[
            ("neon-connection-string", &cs),
            ("neon-raw-text-output", "true"),
            ("neon-array-mode", "true"),
        ],
        &query,
    )
    .await;
    let body = raw.json();
    assert_eq!(
        body["rows"],
        json!([
            ["1", "{a,b}", "{\"k\": [1, 2]}", null],
            ["2", "{}", null, null]
        ])
    );
    assert_eq!(body["rowAsArray"], true);
    // Neon reads `True`, `1`, `yes` as off.
    let loose = sql(
        &gateway,
        &[
            ("neon-connection-string", &cs),
            ("neon-raw-text-output", "True"),
            ("neon-array-mode", "1"),
        ],
        &query,
    )
    .await;
    assert_eq!(
        loose.json()["rows"][0],
        json!({"id": 1, "tags": ["a", "b"], "meta": {"k": [1, 2]}, "n": null})
    );
    // A query's own `arrayMode` wins over the header.
    let own = sql(
        &gateway,
        &[("neon-connection-string", &cs), ("neon-array-mode", "true")],
        &json!({"query": "select 1 as one", "arrayMode": false}),
    )
    .await;
    assert_eq!(own.json()["rows"], json!([{"one": 1}]));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_one_transaction_with_the_batch_headers_and_per_query_modes() {
    let (gateway, _, db, cs) = neon_gateway(POSTS, "").await;
    let reply = sql(
        &gateway,
        &[
            ("neon-connection-string", &cs),
            ("neon-batch-isolation-level", "Serializable"),
            ("neon-batch-read-only", "true"),
            ("neon-batch-deferrable", "true"),
        ],
        &json!({"queries": [
            {"query": "select current_setting('transaction_isolation') as iso, current_setting('transaction_read_only') as ro, current_setting('transaction_deferrable') as d"},
            {"query": "select txid_current_if_assigned() is null as none, $1::int as n", "params": ["7"], "arrayMode": true},
        ]}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.headers["neon-batch-isolation-level"], "Serializable");
    assert_eq!(reply.headers["neon-batch-read-only"], "true");
    assert_eq!(reply.headers["neon-batch-deferrable"], "true");
    let results = reply.json()["results"].clone();
    assert_eq!(
        results[0]["rows"],
        json!([{"iso": "serializable", "ro": "on", "d": "on"}])
    );
    assert_eq!(results[1]["rows"], json!([[true, 7]]));
    assert_eq!(results[1]["rowAsArray"], true);
    assert_eq!(results[0]["rowAsArray"], false);

    // One transaction: the same transaction id throughout, and a failure undoes everything.
    let same = sql(
        &gateway,
        &[("neon-connection-string", &cs)],
        &json!({"queries": [{"query": "select txid_current() as t"}, {"query": "select txid_current() as t"}]}),
    )
    .await
    .json();
    assert_eq!(same["results"][0]["rows"], same["results"][1]["rows"]);
    let failed = sql(
        &gateway,
        &[("neon-connection-string", &cs)],
        &json!({"queries": [
            {"query": "insert into posts (title) values ($1)", "params": ["third"]},
            {"query": "insert into posts (title) values ($1)", "params": ["first"]},
        ]}),
    )
    .await;
    let error = assert_neon_error(&failed, StatusCode::BAD_REQUEST, "database");
    assert_eq!(error["code"], "23505");
    assert_eq!(error["statementIndex"], 1);
    let third: i64 = direct(&db)
        .await
        .query_one("select count(*) from posts where title = 'third'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(third, 0, "the batch was rolled back");
    // Neon's read-only batch refuses writes.
    let read_only = sql(
        &gateway,
        &[
            ("neon-connection-string", &cs),
            ("neon-batch-read-only", "true"),
        ],
        &json!({"queries": [{"query": "insert into posts (title) values ('x')"}]}),
    )
    .await;
    assert_eq!(read_only.json()["code"], "25006", "{}", read_only.text);
    let empty = sql(
        &gateway,
        &[("neon-connection-string", &cs)],
        &json!({"queries": []}),
    )
    .await;
    assert_eq!((empty.status, empty.json()), (200, json!({"results": []})));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_errors_are_neon_error_bodies_at_400() {
    let (gateway, _, _, cs) = neon_gateway(POSTS, "").await;
    let missing = sql(
        &gateway,
        &[("neon-connection-string", &cs)],
        &json!({"query": "select * from no_such_table"}),
    )
    .await;
    let body = assert_neon_error(&missing, StatusCode::BAD_REQUEST, "database");
    assert_eq!(body["message"], "relation \"no_such_table\" does not exist");
    assert_eq!(body["code"], "42P01");
    // Positions and line numbers are strings, as Neon and node-postgres give them.
    assert_eq!(body["position"], "15");
    assert!(body["line"].is_string());
    assert_eq!(body["severity"], "ERROR");
    for absent in [
        "detail",
        "hint",
        "internalPosition",
        "internalQuery",
        "where",
        "table",
        "column",
        "schema",
        "dataType",
        "constraint",
    ] {
        assert_eq!(
            body[absent],
            Value::Null,
            "{absent} is null when Postgres did not send it"
        );
    }
    let duplicate = sql(
        &gateway,
        &[("neon-connection-string", &cs)],
        &json!({"query": "insert into posts (title) values ($1)", "params": ["first"]}),
    )
    .await;
    let body = assert_neon_error(&duplicate, StatusCode::BAD_REQUEST, "database");
    assert_eq!(body["detail"], "Key (title)=(first) already exists.");
    assert_eq!(body["constraint"], "posts_title_key");
    assert_eq!(body["table"], "posts");
    assert_eq!(body["schema"], "public");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_through_sql_keeps_the_cap_and_answers_429_or_503_with_retry_after() {
    let (gateway, _, db, cs) = neon_gateway(
        "",
        "pool_size = 2\nmax_waiting = 4\nqueue_timeout_ms = 400\nrate_per_second = 100000\nburst = 100000",
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_backends(db.clone(), stop.clone());
    let started = Instant::now();
    let replies = futures::future::join_all((0..60).map(|i| {
        let gateway = &gateway;
        let cs = cs.clone();
        async move {
            let body = if i % 2 == 0 {
                json!({"query": "select pg_sleep(0.1), $1::int as i", "params": [i]})
            } else {
                json!({"queries": [{"query": "select pg_sleep(0.1)"}, {"query": "select $1::int as i", "params": [i]}]})
            };
            sql(gateway, &[("neon-connection-string", &cs)], &body).await
        }
    }))
    .await;
    stop.store(true, Ordering::Relaxed);
    let peak = peak_backends(&sampler.await.unwrap());
    assert!(started.elapsed() < Duration::from_secs(30));
    let mut statuses = BTreeSet::new();
    for reply in &replies {
        statuses.insert(reply.status);
        match reply.status {
            200 => {}
            429 | 503 => {
                assert!(reply.retry_after().is_some_and(|s| s >= 1), "{reply:?}");
                let body = reply.json();
                assert!(
                    body["message"].as_str().unwrap().contains("Retry-After"),
                    "{}",
                    reply.text
                );
                assert!(
                    matches!(body["kind"].as_str(), Some("queue_full" | "pool_timeout")),
                    "{}",
                    reply.text
                );
            }
            other => panic!("unexpected {other}: {}", reply.text),
        }
    }
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        statuses.contains(&503),
        "the queue overflowed: {statuses:?}"
    );
    assert!(peak <= 2, "backends peaked at {peak}");
    gateway.stop().await;

    // The tenant's rate limit: 429 with Retry-After, in Neon's error shape.
    let (gateway, _, _, cs) = neon_gateway("", "rate_per_second = 1\nburst = 2").await;
    let select = json!({"query": "select 1"});
    for _ in 0..2 {
        assert_eq!(
            sql(&gateway, &[("neon-connection-string", &cs)], &select)
                .await
                .status,
            200
        );
    }
    let limited = sql(&gateway, &[("neon-connection-string", &cs)], &select).await;
    assert_neon_error(&limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(limited.retry_after().is_some());
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_string_authenticates_as_a_bearer_key_does() {
    let (gateway, key, db, cs) = neon_gateway("", "").await;
    let select = json!({"query": "select current_database() as db"});
    let ok = sql(&gateway, &[("neon-connection-string", &cs)], &select).await;
    assert_eq!(ok.json()["rows"], json!([{"db": db}]));
    // Percent-escapes are decoded, as a URL's are.
    let escaped = connection_string("%61cme", &key.replace('-', "%2D"), &db);
    assert_eq!(
        sql(&gateway, &[("neon-connection-string", &escaped)], &select)
            .await
            .status,
        200
    );

    let wrong = sql(
        &gateway,
        &[(
            "neon-connection-string",
            &connection_string("acme", "nope", &db),
        )],
        &select,
    )
    .await;
    let body = assert_neon_error(&wrong, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(
        !body.to_string().contains("nope"),
        "the key is not echoed: {body}"
    );
    let none = sql(&gateway, &[], &select).await;
    assert_neon_error(&none, StatusCode::UNAUTHORIZED, "unauthorized");
    let no_password = sql(
        &gateway,
        &[(
            "neon-connection-string",
            &format!("postgresql://acme@h/{db}"),
        )],
        &select,
    )
    .await;
    assert_neon_error(&no_password, StatusCode::UNAUTHORIZED, "unauthorized");

    // The user names the tenant whose key the password is.
    let other_user = sql(
        &gateway,
        &[(
            "neon-connection-string",
            &connection_string("globex", &key, &db),
        )],
        &select,
    )
    .await;
    let body = assert_neon_error(&other_user, StatusCode::FORBIDDEN, "forbidden");
    assert!(
        body["message"].as_str().unwrap().contains("\"acme\""),
        "{body}"
    );

    // `Authorization: Bearer` works too, with or without a connection string; its user is then
    // a role name (Neon's JWT clients), not checked against the tenant.
    let bearer = format!("Bearer {key}");
    assert_eq!(
        sql(&gateway, &[("authorization", &bearer)], &select)
            .await
            .status,
        200
    );
    let role = format!("postgresql://authenticated@h/{db}");
    assert_eq!(
        sql(
            &gateway,
            &[
                ("authorization", &bearer),
                ("neon-connection-string", &role)
            ],
            &select
        )
        .await
        .status,
        200
    );
    let bad_bearer = sql(
        &gateway,
        &[
            ("authorization", "Bearer nope"),
            ("neon-connection-string", &cs),
        ],
        &select,
    )
    .await;
    assert_neon_error(&bad_bearer, StatusCode::UNAUTHORIZED, "unauthorized");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_database_in_the_connection_string_is_refused_clearly() {
    let (gateway, key, db, _) = neon_gateway("", "").await;
    let elsewhere = connection_string("acme", &key, "postgres");
    let reply = sql(
        &gateway,
        &[("neon-connection-string", &elsewhere)],
        &json!({"query": "select 1"}),
    )
    .await;
    let body = assert_neon_error(&reply, StatusCode::FORBIDDEN, "forbidden");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("\"postgres\"") && message.contains(&format!("\"{db}\"")),
        "{message}"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_connection_string_passwords_count_toward_the_auth_failure_limit() {
    let db = database("").await;
    let (key, hash) = key("acme");
    let toml =
        config(&db, &hash, "", "").replace("[server]", "[server]\nauth_failures_per_minute = 3");
    let gateway = Gateway::start(&toml).await;
    let select = json!({"query": "select 1"});
    for attempt in 0..4 {
        let guess = connection_string("acme", &format!("guess-{attempt}"), &db);
        let reply = sql(&gateway, &[("neon-connection-string", &guess)], &select).await;
        if attempt < 3 {
            assert_neon_error(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
        } else {
            assert_neon_error(&reply, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        }
    }
    // A right key cannot be told from a wrong one now.
    let right = connection_string("acme", &key, &db);
    let blocked = sql(&gateway, &[("neon-connection-string", &right)], &select).await;
    assert_neon_error(&blocked, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(blocked.retry_after().is_some());
    // The same limiter as every route: /v1/query is blocked for this address too.
    assert_eq!(gateway.client.select_one_status(&key).await, 429);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_400_with_a_message_never_500() {
    let (gateway, _, _, cs) = neon_gateway("", "").await;
    let headers = [("neon-connection-string", cs.as_str())];
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"not json".to_vec(),
        b"[]".to_vec(),
        b"{}".to_vec(),
        br#"{"query": 5}"#.to_vec(),
        br#"{"query": "select 1", "queries": []}"#.to_vec(),
        br#"{"queries": [{"query": "select 1"}], "params": []}"#.to_vec(),
        br#"{"queries": [{"sql": "select 1"}]}"#.to_vec(),
        br#"{"query": ""}"#.to_vec(),
        br#"{"query": "select 1; select 2"}"#.to_vec(),
        br#"{"query": "select $1, $2", "params": [1]}"#.to_vec(),
        br#"{"query": "select $1", "params": ["a\u0000b"]}"#.to_vec(),
        br#"{"queries": [{"query": "select 1"}, {"query": "commit"}]}"#.to_vec(),
        br#"{"query": "select 1", "params": {"a": 1}}"#.to_vec(),
        format!(
            r#"{{"query": "select {}1{}"}}"#,
            "(".repeat(5000),
            ")".repeat(5000)
        )
        .into_bytes(),
        format!(
            r#"{{"query": "select 1", "params": [{}{}]}}"#,
            "[".repeat(200),
            "]".repeat(200)
        )
        .into_bytes(),
    ];
    for body in bodies {
        let reply = gateway
            .client
            .request(Method::POST, "/sql", &headers, body.clone())
            .await;
        assert_neon_error(&reply, StatusCode::BAD_REQUEST, "bad_request");
    }
    let queries = assert_neon_error(
        &sql(
            &gateway,
            &headers,
            &json!({"queries": [{"query": "select 1"}, {"query": ""}]}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert!(
        queries["message"]
            .as_str()
            .unwrap()
            .starts_with("queries[1]"),
        "{queries}"
    );
    let isolation = [headers[0], ("neon-batch-isolation-level", "serializable")];
    for headers in [
        &[("neon-connection-string", "mysql://acme:key@h/db")][..],
        &[("neon-connection-string", "postgresql://acme:%zz@h/db")],
        &isolation,
    ] {
        let reply = gateway
            .client
            .request(
                Method::POST,
                "/sql",
                headers,
                br#"{"query": "select 1"}"#.to_vec(),
            )
            .await;
        assert_neon_error(&reply, StatusCode::BAD_REQUEST, "bad_request");
    }
    // A header that is not text.
    let reply = gateway
        .client
        .request(
            Method::POST,
            "/sql",
            &[("neon-connection-string", "postgresql://acme:\u{e9}@h/db")],
            br#"{"query": "select 1"}"#.to_vec(),
        )
        .await;
    assert_neon_error(&reply, StatusCode::BAD_REQUEST, "bad_request");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_keeps_hygiene_and_cancels_the_statement_of_a_client_that_disconnects() {
    let (gateway, key, db, cs) = neon_gateway("", "pool_size = 1").await;
    let headers = [("neon-connection-string", cs.as_str())];
    let set = sql(
        &gateway,
        &headers,
        &json!({"query": "set work_mem = '7MB'"}),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.text);
    let after = sql(
        &gateway,
        &headers,
        &json!({"query": "select current_setting('work_mem') as w"}),
    )
    .await;
    assert_eq!(
        after.json()["rows"],
        json!([{"w": "4MB"}]),
        "the setting did not leak"
    );

    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let body = json!({"query": "select pg_sleep(30) /* neon abandoned */"}).to_string();
    let request = format!(
        "POST /sql HTTP/1.1\r\nhost: x\r\nneon-connection-string: {cs}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    wait_running(&db, "neon abandoned", 1).await;
    drop(stream);
    // Dropping the connection cancels the statement.
    wait_not_running(&db, "neon abandoned").await;
    assert_eq!(gateway.client.select_one_status(&key).await, 200);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_requests_are_counted_and_routed_as_sql() {
    let (gateway, key, db, admin) = gateway_with_admin("", "").await;
    let cs = connection_string("acme", &key, &db);
    assert_eq!(
        sql(
            &gateway,
            &[("neon-connection-string", &cs)],
            &json!({"query": "select 1"})
        )
        .await
        .status,
        200
    );
    let bad = sql(
        &gateway,
        &[("neon-connection-string", &cs)],
        &json!({"query": "select nope"}),
    )
    .await;
    assert_eq!(bad.status, 400);
    let metrics = gateway.client.get_as("/metrics", Some(&admin)).await;
    for outcome in ["ok", "database"] {
        let line = metrics
            .text
            .lines()
            .find(|l| {
                l.starts_with("sluice_requests_total")
                    && l.contains("route=\"sql\"")
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .unwrap_or_else(|| panic!("no {outcome} line for route sql:\n{}", metrics.text));
        assert!(
            line.contains("tenant=\"acme\"") && line.ends_with(" 1"),
            "{line}"
        );
    }
    // OPTIONS and GET reach the route (for the CORS layer in front of every route), not 404.
    for method in [Method::OPTIONS, Method::GET] {
        let reply = gateway
            .client
            .request(method, "/sql", &[], bytes::Bytes::new())
            .await;
        assert_ne!(reply.status, 404, "{}", reply.text);
    }
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_keeps_the_response_limit_and_the_statement_timeout() {
    let db = database("").await;
    let (key, hash) = key("acme");
    let toml = config(&db, &hash, "statement_timeout_ms = 300", "")
        .replace("[server]", "[server]\nmax_response_bytes = 4096");
    let gateway = Gateway::start(&toml).await;
    let cs = connection_string("acme", &key, &db);
    let headers = [("neon-connection-string", cs.as_str())];
    let large = sql(
        &gateway,
        &headers,
        &json!({"query": "select repeat('x', 100) from generate_series(1, 100)"}),
    )
    .await;
    let body = assert_neon_error(&large, StatusCode::PAYLOAD_TOO_LARGE, "response_too_large");
    assert_eq!(body["limit"], 4096);
    let slow = sql(&gateway, &headers, &json!({"query": "select pg_sleep(5)"})).await;
    let body = assert_neon_error(&slow, StatusCode::BAD_REQUEST, "database");
    assert_eq!(body["code"], "57014");
    // The connection is fine afterwards.
    let next = sql(&gateway, &headers, &json!({"query": "select 1 as one"})).await;
    assert_eq!(next.json()["rows"], json!([{"one": 1}]));
    gateway.stop().await;
}
