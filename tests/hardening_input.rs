//! Hostile input (issue 11, input side): SQL text and parameters that once crashed, hung,
//! poisoned or leaked through the gateway. Each test is named after the bug it pins and drives
//! the gateway over HTTP against a real Postgres (one drives a connection directly, for the
//! class beneath the API's checks); `generated_requests_never_panic_or_answer_500` sends a few
//! thousand generated requests and asserts that every one gets an answer that is not a 500.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

/// One connection for the tenant: whatever a request leaves on it, the next one meets.
async fn one_connection(setup: &str) -> (Gateway, String, String) {
    gateway_for(setup, "pool_size = 1\nmax_transaction_connections = 1").await
}

/// Two connections, so that a transaction (never given a tenant's last one) can open.
async fn two_connections() -> (Gateway, String, String) {
    gateway_for("", "pool_size = 2\nmax_transaction_connections = 1").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unterminated_quoted_identifier_with_multibyte_char_does_not_panic() {
    let (gateway, key, _) = one_connection("").await;
    // The lexer sliced `"é` inside the `é`, and the task panicked: the client got no reply.
    for sql in [
        "select \"é",
        "select U&\"é",
        "select E'\\é",
        "select $é$é",
        "select 1 /* é",
    ] {
        let reply = gateway.client.query(&key, sql, json!([])).await;
        assert_status(&reply, StatusCode::BAD_REQUEST, "database");
        let batch = json!({ "statements": [{ "sql": sql }] });
        let reply = gateway.client.post("/v1/batch", &key, &batch).await;
        assert_status(&reply, StatusCode::BAD_REQUEST, "database");
        let script = json!({ "script": sql });
        let reply = gateway.client.post("/v1/batch", &key, &script).await;
        assert_status(&reply, StatusCode::BAD_REQUEST, "database");
    }
    still_serves(&gateway, &key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_array_parameter_is_bad_request() {
    let (gateway, key, _) = one_connection("").await;
    let nested = |depth: usize| -> Value {
        serde_json::from_str(&format!("{}1{}", "[".repeat(depth), "]".repeat(depth))).unwrap()
    };
    // Six dimensions are Postgres's limit, and fine.
    let reply = gateway
        .client
        .query(&key, "select $1::int[] as a", json!([nested(6)]))
        .await;
    assert_eq!(reply.rows().len(), 1);
    // 20,000 levels overflowed the encoder's stack and aborted the whole process.
    for depth in [7, 20_000] {
        let body = format!(
            r#"{{"sql":"select $1::int[]","params":[{}1{}]}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let reply = post_raw(&gateway, &key, "/v1/query", body.clone()).await;
        assert_status(&reply, StatusCode::BAD_REQUEST, "bad_request");
        assert!(reply.text.contains("dimensions"), "{}", reply.text);
        let batch = format!(r#"{{"statements":[{body}]}}"#);
        let reply = post_raw(&gateway, &key, "/v1/batch", batch).await;
        assert_status(&reply, StatusCode::BAD_REQUEST, "bad_request");
    }
    // Deep nesting anywhere else in a body is refused by the decoder, without recursing.
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    for body in [
        format!(r#"{{"sql":"select 1","rowMode":{deep}}}"#),
        format!(r#"{{"sql":{deep}}}"#),
        format!(r#"{{"sql":"select 1","other":{deep}}}"#),
        format!(r#"{{"sql":"select $1::int","params":[{deep_object}]}}"#),
        format!(r#"{{"statements":{deep}}}"#),
        format!(r#"{{"statements":[{deep}]}}"#),
        format!(r#"{{"script":"select 1","timeoutMs":{deep_object}}}"#),
    ] {
        for path in ["/v1/query", "/v1/batch"] {
            let reply = post_raw(&gateway, &key, path, body.clone()).await;
            assert!(
                reply.status == 400,
                "{path} {}: {}",
                &body[..40],
                reply.text
            );
        }
    }
    // As JSON (a jsonb placeholder) the same array is just text.
    let body = format!(
        r#"{{"sql":"select jsonb_typeof($1::jsonb) as t","params":[{}1{}]}}"#,
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let reply = post_raw(&gateway, &key, "/v1/query", body).await;
    assert_ne!(reply.status, 500, "{}", reply.text);
    still_serves(&gateway, &key).await;
}

async fn post_raw(gateway: &Gateway, key: &str, path: &str, body: String) -> Reply {
    let auth = format!("Bearer {key}");
    gateway
        .client
        .request(
            Method::POST,
            path,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_sql_is_bad_request_and_does_not_poison_the_connection() {
    let (gateway, key, _) = one_connection("").await;
    // Each answered 502 though nothing ran, and left a half-written message that made the
    // next, unrelated request on the connection fail too (a script: stuck for 5 s).
    let one_shot = [
        ("/v1/query".to_owned(), json!({ "sql": "select 1\u{0}" })),
        (
            "/v1/query".to_owned(),
            json!({ "sql": "select $1::text", "params": ["a\u{0}b"] }),
        ),
        (
            "/v1/query".to_owned(),
            json!({ "sql": "select $1::text[]", "params": [["a", "\u{0}"]] }),
        ),
        (
            "/v1/batch".to_owned(),
            json!({ "statements": [{ "sql": "select 1" }, { "sql": "select 2\u{0}" }] }),
        ),
        (
            "/v1/batch".to_owned(),
            json!({ "script": "select 1;\u{0} select 2" }),
        ),
        (
            "/v1/batch".to_owned(),
            json!({ "script": "select 1;\u{0} select 2", "transaction": false }),
        ),
    ];
    let refused = async |path: &str, body: &Value| {
        let started = Instant::now();
        let reply = gateway.client.post(path, &key, body).await;
        assert_status(&reply, StatusCode::BAD_REQUEST, "bad_request");
        assert!(reply.text.contains("NUL"), "{path}: {}", reply.text);
        assert!(started.elapsed() < Duration::from_secs(2), "{path}");
    };
    for (path, body) in &one_shot {
        refused(path, body).await;
        still_serves(&gateway, &key).await;
    }
    // Transactions never hold a tenant's last connection: they get a gateway of two.
    let (gateway, key, _) = two_connections().await;
    let refused = async |path: &str, body: &Value| {
        let reply = gateway.client.post(path, &key, body).await;
        assert_status(&reply, StatusCode::BAD_REQUEST, "bad_request");
        assert!(reply.text.contains("NUL"), "{path}: {}", reply.text);
    };
    let id = begin(&gateway, &key, json!({})).await;
    refused(
        &format!("/v1/transactions/{id}/query"),
        &json!({ "sql": "select 1\u{0}" }),
    )
    .await;
    refused(
        &format!("/v1/transactions/{id}/batch"),
        &json!({ "statements": [{ "sql": "select 1\u{0}" }] }),
    )
    .await;
    // The transaction was never touched: it still works and commits.
    let reply = gateway
        .client
        .post(
            &format!("/v1/transactions/{id}/query"),
            &key,
            &json!({ "sql": "select 1" }),
        )
        .await;
    assert_eq!(reply.rows().len(), 1);
    let reply = gateway
        .client
        .post(&format!("/v1/transactions/{id}/commit"), &key, &json!({}))
        .await;
    assert_status(&reply, StatusCode::OK, "");
    still_serves(&gateway, &key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_call_after_from_is_reset() {
    let (gateway, key, db) = one_connection("").await;
    let pid = single_value(&gateway, &key, "select pg_backend_pid() as p").await;
    let default_path = single_value(&gateway, &key, "show search_path").await;
    // Each of these changed the session unseen: the lexer took `name(` after FROM, JOIN, ON
    // or ONLY for a table, and U&"…" for a string.
    let leaks = [
        "select * from set_config('search_path', 'x', false)",
        "select * from pg_catalog.set_config('search_path', 'x', false)",
        "explain analyze select * from set_config('search_path', 'x', false)",
        "select * from (select 1) t join set_config('search_path', 'x', false) s on true",
        "select * from (select 1) t join (select 2) u on set_config('search_path', 'x', false) <> ''",
        "select * from (select 1) t, lateral set_config('search_path', 'x', false)",
    ];
    for sql in leaks {
        let reply = gateway.client.query(&key, sql, json!([])).await;
        assert_status(&reply, StatusCode::OK, "");
        assert_eq!(
            single_value(&gateway, &key, "show search_path").await,
            default_path,
            "{sql} leaked its search_path"
        );
    }
    // A session-level advisory lock taken in FROM is released before the next request.
    let reply = gateway
        .client
        .query(&key, "select * from pg_advisory_lock(42)", json!([]))
        .await;
    assert_status(&reply, StatusCode::OK, "");
    let direct = direct(&db).await;
    wait_until("the advisory lock released after the request", async || {
        let held: i64 = direct
            .query_one(
                "select count(*) from pg_locks where locktype = 'advisory' and objid = 42",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        held == 0
    })
    .await;
    // All on the same backend: reset, not replaced.
    assert_eq!(
        single_value(&gateway, &key, "select pg_backend_pid() as p").await,
        pid
    );
    // A U&"…" name could spell anything, `setseed` too: its connection is not reused.
    for sql in [
        "select U&\"set_config\"('search_path', 'x', false)",
        "select U&\"\\0073et_config\"('search_path', 'x', false)",
    ] {
        let reply = gateway.client.query(&key, sql, json!([])).await;
        assert_status(&reply, StatusCode::OK, "");
        assert_eq!(
            single_value(&gateway, &key, "show search_path").await,
            default_path,
            "{sql} leaked its search_path"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setseed_and_load_close_the_connection_instead_of_a_reset() {
    let (gateway, key, _) = one_connection("").await;
    // No reset undoes a seeded random sequence (the next request could predict `random()`)
    // or a loaded library: the connection must go.
    for sql in [
        "select setseed(0.5)",
        "select * from setseed(0.5)",
        "load 'plpgsql'",
    ] {
        let before = single_value(&gateway, &key, "select pg_backend_pid() as p").await;
        let reply = gateway.client.query(&key, sql, json!([])).await;
        assert_status(&reply, StatusCode::OK, "");
        let after = single_value(&gateway, &key, "select pg_backend_pid() as p").await;
        assert_ne!(before, after, "{sql}: the connection was reused");
    }
    let before = single_value(&gateway, &key, "select pg_backend_pid() as p").await;
    let script = json!({ "script": "select 1; select setseed(0.1); select 2" });
    let reply = gateway.client.post("/v1/batch", &key, &script).await;
    assert_status(&reply, StatusCode::OK, "");
    let after = single_value(&gateway, &key, "select pg_backend_pid() as p").await;
    assert_ne!(
        before, after,
        "a script with setseed: the connection was reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_all_is_refused_and_cache_stays_valid() {
    let (gateway, key, _) = one_connection("").await;
    let cached = "select $1::int + 1 as n";
    let warm = async || {
        let reply = gateway.client.query(&key, cached, json!([1])).await;
        assert_eq!(reply.rows(), vec![json!({ "n": 2 })], "{}", reply.text);
    };
    warm().await;
    // Each dropped (or could collide with) the gateway's prepared statements: every later
    // cached request on the connection failed with 26000 or 42P05.
    let refused = [
        "deallocate all",
        "DEALLOCATE PREPARE ALL",
        "discard all",
        "discard plans",
        "prepare sluice_1 as select 1",
        "prepare SLUICE_99 as select 1",
        "execute sluice_1",
        "deallocate sluice_1",
    ];
    for sql in refused {
        for (path, body) in [
            ("/v1/query", json!({ "sql": sql })),
            ("/v1/batch", json!({ "statements": [{ "sql": sql }] })),
            (
                "/v1/batch",
                json!({ "script": format!("select 1; {sql}"), "transaction": false }),
            ),
        ] {
            let reply = gateway.client.post(path, &key, &body).await;
            assert_status(&reply, StatusCode::BAD_REQUEST, "bad_request");
        }
        warm().await;
    }
    // In a transaction (transactions never hold a tenant's last connection: a gateway of two).
    {
        let (gateway, key, _) = two_connections().await;
        let id = begin(&gateway, &key, json!({})).await;
        for sql in refused {
            for (action, body) in [
                ("query", json!({ "sql": sql })),
                ("batch", json!({ "statements": [{ "sql": sql }] })),
            ] {
                let path = format!("/v1/transactions/{id}/{action}");
                let reply = gateway.client.post(&path, &key, &body).await;
                assert_status(&reply, StatusCode::BAD_REQUEST, "bad_request");
            }
        }
        let reply = gateway
            .client
            .post(&format!("/v1/transactions/{id}/rollback"), &key, &json!({}))
            .await;
        assert_status(&reply, StatusCode::OK, "");
    }
    // The client's own prepared statements still work.
    let reply = gateway
        .client
        .post(
            "/v1/batch",
            &key,
            &json!({ "script": "prepare mine as select 1; execute mine; deallocate mine" }),
        )
        .await;
    assert_status(&reply, StatusCode::OK, "");
    warm().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_all_hidden_in_a_function_fails_no_later_request() {
    let (gateway, key, _) = one_connection(
        "create function forget() returns void language plpgsql as \
         $$ begin execute 'deallocate all'; end $$",
    )
    .await;
    let cached = "select $1::int + 1 as n";
    let reply = gateway.client.query(&key, cached, json!([1])).await;
    assert_eq!(reply.rows().len(), 1);
    let batch = json!({ "statements": [{ "sql": cached, "params": [2] }] });
    let reply = gateway.client.post("/v1/batch", &key, &batch).await;
    assert_status(&reply, StatusCode::OK, "");
    // The lexer cannot see inside the function: the gateway learns of it from Postgres.
    let reply = gateway
        .client
        .query(&key, "select forget()", json!([]))
        .await;
    assert_status(&reply, StatusCode::OK, "");
    let reply = gateway.client.query(&key, cached, json!([1])).await;
    assert_eq!(reply.rows(), vec![json!({ "n": 2 })], "{}", reply.text);
    let reply = gateway
        .client
        .query(&key, "select forget()", json!([]))
        .await;
    assert_status(&reply, StatusCode::OK, "");
    // A batch that meets a lost statement may fail once; the next one prepares afresh.
    let _ = gateway.client.post("/v1/batch", &key, &batch).await;
    let reply = gateway.client.post("/v1/batch", &key, &batch).await;
    assert_status(&reply, StatusCode::OK, "");
    still_serves(&gateway, &key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_comment_is_refused() {
    let db = database("").await;
    let (key, hash) = key("acme");
    let toml = config(&db, &hash, "pool_size = 1", "").replace(
        "shutdown_timeout_ms = 10000",
        "shutdown_timeout_ms = 10000\nmax_sql_bytes = 450000",
    );
    let gateway = Gateway::start(&toml).await;
    // Postgres's scanner is quadratic in comment depth: at 100,000 the statement ran past any
    // timeout, could not be cancelled, and held its connection.
    let comments = |depth: usize| format!("select 1 {}{}", "/*".repeat(depth), "*/".repeat(depth));
    let parens = |depth: usize| format!("select {}1{}", "(".repeat(depth), ")".repeat(depth));
    let long = format!("select '{}'", "x".repeat(460_000));
    for (sql, expected) in [
        (comments(33), "block comments 33 deep"),
        (comments(100_000), "block comments 100000 deep"),
        (parens(1001), "parentheses 1001 deep"),
        (long, "the limit is 450000"),
    ] {
        let body = json!({ "sql": sql });
        let started = Instant::now();
        let reply = gateway.client.post("/v1/query", &key, &body).await;
        assert_status(&reply, StatusCode::BAD_REQUEST, "bad_request");
        assert!(reply.text.contains(expected), "{}", reply.text);
        let script = json!({ "script": sql });
        let reply = gateway.client.post("/v1/batch", &key, &script).await;
        assert_status(&reply, StatusCode::BAD_REQUEST, "bad_request");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // Within the limits, nesting is fine.
    let reply = gateway.client.query(&key, &comments(32), json!([])).await;
    assert_eq!(reply.rows().len(), 1);
    let reply = gateway.client.query(&key, &parens(100), json!([])).await;
    assert_eq!(reply.rows().len(), 1);
}

/// Valid requests of every route, the seeds of the generated ones.
fn seeds(transaction: &str) -> Vec<(String, String)> {
    let tx = |action: &str| format!("/v1/transactions/{transaction}/{action}");
    [
        ("/v1/query".to_owned(), json!({ "sql": "select $1::int as n, 'é' as s", "params": [1] })),
        ("/v1/query".to_owned(), json!({ "sql": "select * from t where id = $1 and name = $2", "params": [1, "あ😀"] })),
        ("/v1/query".to_owned(), json!({ "sql": "select $1::text[] as a, $2::jsonb as j", "params": [["a", null], {"k": [1, 2]}], "rowMode": "array", "types": "text" })),
        ("/v1/query".to_owned(), json!({ "sql": "insert into t (name) values ($1) returning id", "params": ["x"], "timeoutMs": 500 })),
        ("/v1/batch".to_owned(), json!({ "statements": [{ "sql": "select 1" }, { "sql": "select $1::int", "params": [2] }], "isolation": "serializable", "readOnly": true })),
        ("/v1/batch".to_owned(), json!({ "script": "create temp table x (a int); insert into x values (1); select * from x" })),
        ("/v1/batch".to_owned(), json!({ "script": "select 1; select /* c */ 2 -- d\n", "transaction": false })),
        ("/v1/transactions".to_owned(), json!({ "isolation": "repeatable read", "idleTimeoutMs": 1000 })),
        (tx("query"), json!({ "sql": "select \"name\" from t where name like $1", "params": ["%é%"] })),
        (tx("batch"), json!({ "statements": [{ "sql": "update t set name = $1 where id = $2", "params": ["y", 1] }] })),
        (tx("commit"), json!({})),
        (tx("rollback"), json!({})),
    ]
    .into_iter()
    .map(|(path, body)| (path, body.to_string()))
    .collect()
}

/// Pieces that open or close the lexer's and the decoder's states.
const FRAGMENTS: &[&str] = &[
    "'",
    "\"",
    "$$",
    "$a$",
    "$1",
    "$2",
    "/*",
    "*/",
    "--",
    "\n",
    ";",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "\\",
    "\\u0000",
    "\\ud800",
    "é",
    "あ",
    "😀",
    "U&\"",
    "E'",
    "null",
    "[[[[[[[[1]]]]]]]]",
    "1e999",
    "-0",
    "\"sql\"",
    "\"params\"",
    " from set_config('a.b', 'c', false)",
    "deallocate all",
];

/// A mutation of `seed`: byte-level edits of the body (any bytes, often invalid UTF-8 or
/// JSON), or edits of the SQL inside a still-valid body.
fn mutate(rng: &mut SmallRng, seed: &str) -> Vec<u8> {
    let mut body = seed.as_bytes().to_vec();
    if rng.random_bool(0.7)
        && let Ok(mut value) = serde_json::from_str::<Value>(seed)
    {
        // Keep the JSON valid, mutate its SQL text.
        let pointer = ["/sql", "/script", "/statements/0/sql"]
            .into_iter()
            .find(|p| value.pointer(p).is_some())
            .unwrap_or("/sql");
        let sql = value.pointer_mut(pointer);
        if let Some(Value::String(sql)) = sql {
            let mut chars: Vec<char> = sql.chars().collect();
            for _ in 0..rng.random_range(1..3) {
                let at = rng.random_range(0..=chars.len());
                match rng.random_range(0..3) {
                    0 => {
                        let fragment = FRAGMENTS[rng.random_range(0..FRAGMENTS.len())];
                        chars.splice(at..at, fragment.chars());
                    }
                    1 if at < chars.len() => {
                        chars.remove(at);
                    }
                    _ => chars.truncate(at.max(1)),
                }
            }
            *sql = chars.into_iter().collect();
            return value.to_string().into_bytes();
        }
    }
    for _ in 0..rng.random_range(1..6) {
        let at = rng.random_range(0..=body.len());
        match rng.random_range(0..5) {
            0 => {
                let fragment = FRAGMENTS[rng.random_range(0..FRAGMENTS.len())];
                body.splice(at..at, fragment.bytes());
            }
            1 => body.insert(at, rng.random()),
            2 if at < body.len() => body[at] = rng.random(),
            3 if at < body.len() => {
                body.remove(at);
            }
            _ => body.truncate(at),
        }
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_never_panic_or_answer_500() {
    // Whatever arrives — mutations of valid requests for every route, random bytes,
    // multi-byte text — the decoder and the lexer answer, and the gateway never says 500 (a
    // panic in a request task) nor drops the connection without a reply.
    let mut rng = SmallRng::seed_from_u64(0x5eed_1100);
    for _ in 0..5_000 {
        let (path, seed) = &seeds("id")[rng.random_range(0..12)];
        let body = if rng.random_bool(0.1) {
            (0..rng.random_range(0..64)).map(|_| rng.random()).collect()
        } else {
            mutate(&mut rng, seed)
        };
        let _ = sluice::api::decode_request(path, &body);
        let _ = sluice::pg::SqlAnalysis::of(&String::from_utf8_lossy(&body));
    }

    let (gateway, key, _) = gateway_for(
        "create table t (id serial primary key, name text); insert into t (name) values ('a')",
        "pool_size = 4\nstatement_timeout_ms = 2000\nmax_transactions = 50\nrate_per_second = 100000\nburst = 100000",
    )
    .await;
    let auth = format!("Bearer {key}");
    let started = Instant::now();
    let mut outcomes = std::collections::BTreeMap::<(u16, String), usize>::new();
    let mut transaction = begin(&gateway, &key, json!({})).await;
    for round in 0..250 {
        if round % 25 == 0 {
            let _ = gateway
                .client
                .post(
                    &format!("/v1/transactions/{transaction}/rollback"),
                    &key,
                    &json!({}),
                )
                .await;
            // Generated begins may hold every transaction slot: then calls go to the old
            // (perhaps expired) id, which is as good a test.
            let reply = gateway
                .client
                .post("/v1/transactions", &key, &json!({}))
                .await;
            if reply.status == 201 {
                transaction = reply.json()["id"].as_str().unwrap().to_owned();
            }
        }
        let seeds = seeds(&transaction);
        let requests: Vec<(String, Vec<u8>)> = (0..8)
            .map(|_| {
                let (path, seed) = &seeds[rng.random_range(0..seeds.len())];
                let body = if rng.random_bool(0.05) {
                    (0..rng.random_range(0..256))
                        .map(|_| rng.random())
                        .collect()
                } else {
                    mutate(&mut rng, seed)
                };
                (path.clone(), body)
            })
            .collect();
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        let replies = futures::future::join_all(requests.iter().map(|(path, body)| {
            gateway
                .client
                .request(Method::POST, path, &headers, body.clone())
        }))
        .await;
        for ((path, body), reply) in requests.iter().zip(replies) {
            let kind = serde_json::from_str::<Value>(&reply.text)
                .ok()
                .and_then(|v| v["error"]["kind"].as_str().map(str::to_owned))
                .unwrap_or_default();
            *outcomes.entry((reply.status, kind)).or_default() += 1;
            assert!(
                reply.status != 500 && reply.status != 502,
                "{path} {:?}: {} {}",
                String::from_utf8_lossy(body),
                reply.status,
                reply.text
            );
        }
    }
    eprintln!(
        "2,000 generated requests in {:?}: {outcomes:?}",
        started.elapsed()
    );
    still_serves(&gateway, &key).await;
}

/// Rows a pipeline produces, dropped.
struct Discard;

impl sluice::pg::ResultSink for Discard {
    fn begin_statement(&mut self, _: usize, _: &std::sync::Arc<sluice::pg::Statement>) {}
    fn row(&mut self, _: &postgres_protocol::message::backend::DataRowBody) -> std::io::Result<()> {
        Ok(())
    }
    fn end_statement(&mut self, _: &sluice::pg::CommandTag) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_cannot_be_encoded_leaves_the_connection_in_sync() {
    // The API refuses NUL before a connection is used; this is the class underneath: a message
    // that fails to encode was left half-written in the write buffer, sent ahead of the next
    // request, and the connection answered garbage (or waited 5 s for a reply never owed).
    use sluice::pg::{
        ConnectConfig, PgConnection, PipelineStatement, QueryError, QueryOptions, SessionEffect,
        TlsConnector, TypeRegistry,
    };
    let db = database("").await;
    let url = sluice::config::PostgresUrl::parse(&pg_url(&db)).unwrap();
    let config = ConnectConfig {
        target: url.target,
        user: url.user,
        password: url.password,
        database: url.database,
        tls: TlsConnector::disabled(),
        connect_timeout: Duration::from_secs(10),
        settings: Vec::new(),
        statement_timeout_ms: 0,
        statement_cache_size: 8,
        auth: Default::default(),
    };
    let mut conn = PgConnection::connect(&config).await.unwrap();
    let types = TypeRegistry::default();
    // A timeout other than the session's makes each call queue a `SET` first, so the failure
    // comes with something already queued before it.
    let options = QueryOptions {
        statement_timeout_ms: 1234,
        session_effect: SessionEffect::None,
        types: &types,
    };
    let rejected =
        |error: QueryError| assert!(matches!(error, QueryError::Rejected(_)), "{error:?}");
    let works = async |conn: &mut PgConnection| {
        assert!(conn.is_in_sync());
        let started = Instant::now();
        let mut rows = conn.query("select 1", &[], &options).await.unwrap();
        assert!(rows.next().await.unwrap().is_some());
        rows.finish().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
    };
    works(&mut conn).await;

    rejected(conn.query("select 2\0", &[], &options).await.err().unwrap());
    works(&mut conn).await;
    rejected(conn.simple_query("select 2\0").await.unwrap_err());
    works(&mut conn).await;
    rejected(
        conn.script("select 2;\0", Some("BEGIN"), 4321)
            .await
            .unwrap_err()
            .error,
    );
    works(&mut conn).await;
    let statements = [
        PipelineStatement {
            sql: "select 3",
            params: &[],
            session_effect: SessionEffect::None,
        },
        PipelineStatement {
            sql: "select 4\0",
            params: &[],
            session_effect: SessionEffect::None,
        },
    ];
    rejected(
        conn.pipeline(&statements, Some("BEGIN"), &options, &mut Discard)
            .await
            .unwrap_err()
            .error,
    );
    works(&mut conn).await;
}
