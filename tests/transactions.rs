//! Transactions over HTTP: atomic batches, scripts, and interactive transactions with their
//! timeouts, against a real Postgres.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

const ACCOUNTS: &str =
    "create table accounts (id int primary key, balance int not null check (balance >= 0));
                        insert into accounts values (1, 100), (2, 0);";

async fn count(db: &str, sql: &str) -> i64 {
    direct(db).await.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_commits_every_statement_and_returns_each_result() {
    let (gateway, key, db) = gateway_for(ACCOUNTS, "").await;
    let reply = gateway
        .client
        .post(
            "/v1/batch",
            &key,
            &json!({"statements": [
                {"sql": "update accounts set balance = balance - $1 where id = 1", "params": [30]},
                {"sql": "update accounts set balance = balance + $1 where id = 2", "params": [30]},
                {"sql": "select id, balance from accounts order by id"},
            ], "rowMode": "array"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let results = reply.json()["results"].clone();
    assert_eq!(results[0]["command"], "UPDATE");
    assert_eq!(results[0]["rowCount"], 1);
    assert_eq!(results[2]["rows"], json!([[1, 70], [2, 30]]));
    assert_eq!(results[2]["fields"][1]["name"], "balance");
    assert_eq!(
        count(&db, "select balance::int8 from accounts where id = 2").await,
        30
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_statement_rolls_back_the_whole_batch() {
    let (gateway, key, db) = gateway_for(ACCOUNTS, "").await;
    let reply = gateway
        .client
        .post(
            "/v1/batch",
            &key,
            &json!({"statements": [
                {"sql": "update accounts set balance = balance + 500 where id = 2"},
                {"sql": "insert into accounts values (3, 10)"},
                {"sql": "update accounts set balance = balance - 500 where id = 1"},
                {"sql": "select 1"},
            ]}),
        )
        .await;
    assert_status(&reply, StatusCode::BAD_REQUEST, "database");
    let error = &reply.json()["error"];
    assert_eq!(error["statementIndex"], 2);
    assert_eq!(error["code"], "23514");
    assert_eq!(error["constraint"], "accounts_balance_check");
    assert_eq!(
        count(&db, "select balance::int8 from accounts where id = 2").await,
        0
    );
    assert_eq!(count(&db, "select count(*) from accounts").await, 2);
    // The connection is clean and usable.
    let after = gateway
        .client
        .query(&key, "select count(*) from accounts", json!([]))
        .await;
    assert_eq!(after.rows()[0]["count"], "2");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_and_read_only_take_effect() {
    let (gateway, key, _) = gateway_for(ACCOUNTS, "").await;
    let c = &gateway.client;
    let reply = c
        .post(
            "/v1/batch",
            &key,
            &json!({"statements": [{"sql": "select current_setting('transaction_isolation') as i, current_setting('transaction_read_only') as r"}],
                    "isolation": "serializable", "readOnly": true}),
        )
        .await;
    assert_eq!(
        reply.json()["results"][0]["rows"],
        json!([{"i": "serializable", "r": "on"}])
    );
    let write = c
        .post(
            "/v1/batch",
            &key,
            &json!({"statements": [{"sql": "delete from accounts"}], "readOnly": true}),
        )
        .await;
    assert_status(&write, StatusCode::BAD_REQUEST, "database");
    assert_eq!(write.json()["error"]["code"], "25006");
    assert_eq!(write.json()["error"]["statementIndex"], 0);
    let bad = c
        .post(
            "/v1/batch",
            &key,
            &json!({"statements": [{"sql": "select 1"}], "isolation": "chaotic"}),
        )
        .await;
    assert_status(&bad, StatusCode::BAD_REQUEST, "bad_request");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_refuse_what_they_cannot_run_before_running_anything() {
    let (gateway, key, db) = gateway_for(ACCOUNTS, "").await;
    let c = &gateway.client;
    let cases = [
        (json!({"statements": []}), "empty"),
        (
            json!({"statements": [{"sql": "delete from accounts"}, {"sql": "commit"}]}),
            "statements[1]: transaction control",
        ),
        (
            json!({"statements": [{"sql": "delete from accounts"}, {"sql": "select $1"}]}),
            "statements[1]:",
        ),
        (
            json!({"statements": [{"sql": "select 1; select 2"}]}),
            "statements[0]:",
        ),
        (
            json!({"statements": [{"sql": "select 1"}], "script": "select 1"}),
            "not both",
        ),
        (json!({}), "statements"),
        (
            json!({"script": "select 1", "transaction": false, "isolation": "serializable"}),
            "need `transaction`",
        ),
        (
            json!({"script": "begin; select 1; commit"}),
            "controls transactions itself",
        ),
    ];
    for (body, expected) in cases {
        let reply = c.post("/v1/batch", &key, &body).await;
        assert_status(&reply, StatusCode::BAD_REQUEST, "bad_request");
        assert!(
            reply.text.contains(expected),
            "expected {expected:?} in {}",
            reply.text
        );
    }
    assert_eq!(
        count(&db, "select count(*) from accounts").await,
        2,
        "nothing ran"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_run_ddl_and_dml_in_one_transaction() {
    let (gateway, key, db) = gateway_for("", "").await;
    let c = &gateway.client;
    let script = "create table items (id serial primary key, name text);
                  insert into items (name) values ('a'), ('b');
                  update items set name = upper(name);
                  create view item_names as select name from items;";
    let reply = c
        .post("/v1/batch", &key, &json!({ "script": script }))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        reply.json()["results"],
        json!([
            {"command": "CREATE", "rowCount": null},
            {"command": "INSERT", "rowCount": 2},
            {"command": "UPDATE", "rowCount": 2},
            {"command": "CREATE", "rowCount": null},
        ])
    );
    // All or nothing: a failure in the third statement undoes the first two.
    let failing =
        "create table more (a int); insert into more values (1); insert into nope values (1);";
    let reply = c
        .post("/v1/batch", &key, &json!({ "script": failing }))
        .await;
    assert_status(&reply, StatusCode::BAD_REQUEST, "database");
    assert_eq!(reply.json()["error"]["code"], "42P01");
    assert_eq!(reply.json()["error"]["statementIndex"], 2);
    assert_eq!(
        count(&db, "select count(*) from pg_class where relname = 'more'").await,
        0
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_without_a_transaction_run_create_index_concurrently() {
    let (gateway, key, db) = gateway_for(
        "create table big (a int); insert into big select generate_series(1, 1000);",
        "",
    )
    .await;
    let c = &gateway.client;
    let in_transaction = c
        .post(
            "/v1/batch",
            &key,
            &json!({ "script": "create index concurrently big_a on big (a)" }),
        )
        .await;
    assert_status(&in_transaction, StatusCode::BAD_REQUEST, "database");
    assert_eq!(in_transaction.json()["error"]["code"], "25001");
    let reply = c
        .post(
            "/v1/batch",
            &key,
            &json!({ "script": "create index concurrently big_a on big (a); vacuum big; select 1", "transaction": false }),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["results"][0]["command"], "CREATE");
    assert_eq!(reply.json()["results"][1]["command"], "VACUUM");
    assert_eq!(
        count(
            &db,
            "select count(*) from pg_indexes where indexname = 'big_a'"
        )
        .await,
        1
    );
    // Statements before a failure stay done; the error names the failing one.
    let partial = c
        .post("/v1/batch", &key, &json!({ "script": "insert into big values (-1); select 1/0; insert into big values (-2)", "transaction": false }))
        .await;
    assert_eq!(partial.json()["error"]["statementIndex"], 1);
    assert_eq!(count(&db, "select count(*) from big where a < 0").await, 1);
    gateway.stop().await;
}

/// Begins a transaction; returns its id.
async fn begin(gateway: &Gateway, key: &str, body: Value) -> String {
    let reply = gateway.client.post("/v1/transactions", key, &body).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply.json()["id"].as_str().unwrap().to_owned()
}

async fn tx(gateway: &Gateway, key: &str, id: &str, action: &str, body: Value) -> Reply {
    gateway
        .client
        .post(&format!("/v1/transactions/{id}/{action}"), key, &body)
        .await
}

async fn tx_query(gateway: &Gateway, key: &str, id: &str, sql: &str) -> Reply {
    tx(gateway, key, id, "query", json!({ "sql": sql })).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interactive_transaction_is_isolated_until_commit() {
    let (gateway, key, db) = gateway_for(ACCOUNTS, "").await;
    let reply = gateway
        .client
        .post("/v1/transactions", &key, &json!({}))
        .await;
    assert_eq!(reply.status, 201);
    let body = reply.json();
    let id = body["id"].as_str().unwrap().to_owned();
    assert!(
        id.starts_with("tx_") && id.len() >= 3 + 22,
        "at least 128 random bits: {id}"
    );
    assert_eq!(body["idleTimeoutMs"], 5000);
    assert!(body["expiresAt"].as_str().unwrap().ends_with('Z'));

    let insert = tx(
        &gateway,
        &key,
        &id,
        "query",
        json!({"sql": "insert into accounts values ($1, $2)", "params": [3, 7]}),
    )
    .await;
    assert_eq!(insert.json()["rowCount"], 1, "{}", insert.text);
    let inside = tx_query(&gateway, &key, &id, "select count(*) from accounts").await;
    assert_eq!(inside.rows()[0]["count"], "3");
    assert_eq!(
        count(&db, "select count(*) from accounts").await,
        2,
        "not visible outside yet"
    );
    let batch = tx(&gateway, &key, &id, "batch", json!({"statements": [{"sql": "update accounts set balance = 1 where id = 3"}, {"sql": "select balance from accounts where id = 3"}]})).await;
    assert_eq!(
        batch.json()["results"][1]["rows"],
        json!([{"balance": 1}]),
        "{}",
        batch.text
    );
    let commit = tx(&gateway, &key, &id, "commit", json!({})).await;
    assert_eq!(commit.json(), json!({"command": "COMMIT"}));
    assert_eq!(count(&db, "select count(*) from accounts").await, 3);
    // The id is gone.
    assert_status(
        &tx_query(&gateway, &key, &id, "select 1").await,
        StatusCode::NOT_FOUND,
        "transaction_not_found",
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_discards_and_commit_of_a_failed_transaction_rolls_back() {
    let (gateway, key, db) = gateway_for(ACCOUNTS, "").await;
    let id = begin(&gateway, &key, json!({})).await;
    tx_query(&gateway, &key, &id, "delete from accounts").await;
    assert_eq!(
        tx(&gateway, &key, &id, "rollback", json!({})).await.json(),
        json!({"command": "ROLLBACK"})
    );
    assert_eq!(count(&db, "select count(*) from accounts").await, 2);

    let id = begin(&gateway, &key, json!({})).await;
    tx_query(&gateway, &key, &id, "delete from accounts where id = 2").await;
    let failed = tx_query(&gateway, &key, &id, "select 1/0").await;
    assert_eq!(failed.json()["error"]["code"], "22012");
    let commit = tx(&gateway, &key, &id, "commit", json!({})).await;
    assert_eq!(
        commit.json(),
        json!({"command": "ROLLBACK"}),
        "a failed transaction cannot commit"
    );
    assert_eq!(count(&db, "select count(*) from accounts").await, 2);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoints_and_failed_statements_behave_as_in_postgres() {
    let (gateway, key, db) = gateway_for(ACCOUNTS, "").await;
    let id = begin(&gateway, &key, json!({})).await;
    tx_query(&gateway, &key, &id, "insert into accounts values (3, 3)").await;
    assert_eq!(
        tx_query(&gateway, &key, &id, "savepoint before_mistake")
            .await
            .status,
        200
    );
    assert_eq!(
        tx_query(&gateway, &key, &id, "insert into accounts values (1, 1)")
            .await
            .json()["error"]["code"],
        "23505"
    );
    assert_eq!(
        tx_query(&gateway, &key, &id, "select 1").await.json()["error"]["code"],
        "25P02"
    );
    assert_eq!(
        tx_query(&gateway, &key, &id, "rollback to savepoint before_mistake")
            .await
            .status,
        200
    );
    assert_eq!(
        tx_query(&gateway, &key, &id, "insert into accounts values (4, 4)")
            .await
            .status,
        200
    );
    // Transaction control belongs to the gateway.
    let sneaky = tx_query(&gateway, &key, &id, "commit").await;
    assert_status(&sneaky, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(
        tx(&gateway, &key, &id, "commit", json!({})).await.json()["command"],
        "COMMIT"
    );
    assert_eq!(
        count(&db, "select count(*) from accounts where id in (3, 4)").await,
        2
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_transaction_is_rolled_back_and_its_locks_released() {
    let (gateway, key, db) = gateway_for(ACCOUNTS, "").await;
    let id = begin(&gateway, &key, json!({"idleTimeoutMs": 300})).await;
    let locked = tx_query(
        &gateway,
        &key,
        &id,
        "select * from accounts where id = 1 for update",
    )
    .await;
    assert_eq!(locked.status, 200);
    tx_query(
        &gateway,
        &key,
        &id,
        "update accounts set balance = 0 where id = 1",
    )
    .await;
    // Not idle while in use.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(tx_query(&gateway, &key, &id, "select 1").await.status, 200);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let expired = tx_query(&gateway, &key, &id, "select 1").await;
    assert_status(&expired, StatusCode::NOT_FOUND, "transaction_not_found");
    assert_eq!(expired.json()["error"]["reason"], "expired");
    // Rolled back, and the row lock is gone.
    let admin = direct(&db).await;
    admin
        .batch_execute("select * from accounts where id = 1 for update nowait")
        .await
        .expect("lock released");
    assert_eq!(
        count(&db, "select balance::int8 from accounts where id = 1").await,
        100
    );
    // An id that never existed is told apart from an expired one.
    let unknown = tx_query(&gateway, &key, "tx_never", "select 1").await;
    assert_status(&unknown, StatusCode::NOT_FOUND, "transaction_not_found");
    assert_eq!(unknown.json()["error"].get("reason"), None);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_ends_at_its_maximum_lifetime_even_when_busy() {
    let (gateway, key, _) = gateway_for(
        ACCOUNTS,
        "transaction_max_ms = 1000\ntransaction_idle_timeout_ms = 1000",
    )
    .await;
    let id = begin(&gateway, &key, json!({})).await;
    let started = Instant::now();
    // Keep it busy past its lifetime: the running statement is cancelled at the deadline.
    let long = tx_query(&gateway, &key, &id, "select pg_sleep(5)").await;
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "cancelled at the lifetime, took {:?}",
        started.elapsed()
    );
    // The cancelled call reads as the expiry it was (issue 11, item 8), not as 57014.
    assert_status(&long, StatusCode::NOT_FOUND, "transaction_not_found");
    assert_eq!(long.json()["error"]["reason"], "expired", "{}", long.text);
    let after = tx_query(&gateway, &key, &id, "select 1").await;
    assert_status(&after, StatusCode::NOT_FOUND, "transaction_not_found");
    assert_eq!(after.json()["error"]["reason"], "expired");
    // The idle timeout asked for cannot exceed the tenant's.
    let reply = gateway
        .client
        .post("/v1/transactions", &key, &json!({"idleTimeoutMs": 60000}))
        .await;
    assert_eq!(reply.json()["idleTimeoutMs"], 1000);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_call_while_one_runs_gets_409() {
    let (gateway, key, _) = gateway_for(ACCOUNTS, "").await;
    let id = begin(&gateway, &key, json!({})).await;
    let running = {
        let (client, key, id) = (gateway.client.clone(), key.clone(), id.clone());
        tokio::spawn(async move {
            client
                .post(
                    &format!("/v1/transactions/{id}/query"),
                    &key,
                    &json!({"sql": "select pg_sleep(1)"}),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_status(
        &tx_query(&gateway, &key, &id, "select 1").await,
        StatusCode::CONFLICT,
        "transaction_busy",
    );
    assert_status(
        &tx(&gateway, &key, &id, "commit", json!({})).await,
        StatusCode::CONFLICT,
        "transaction_busy",
    );
    assert_eq!(running.await.unwrap().status, 200);
    assert_eq!(
        tx(&gateway, &key, &id, "commit", json!({})).await.status,
        200
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_key_cannot_see_the_transaction() {
    let db = database(ACCOUNTS).await;
    let (key, hash) = key("acme");
    let (other, other_hash) = common::key("other");
    let toml = format!(
        "{}\n[[tenants]]\nid = \"other\"\napi_keys = [\"{other_hash}\"]\npool_size = 2\n",
        config(&db, &hash, "", "")
    );
    let gateway = Gateway::start(&toml).await;
    let id = begin(&gateway, &key, json!({})).await;
    for (action, body) in [
        ("query", json!({"sql": "select 1"})),
        ("commit", json!({})),
        ("rollback", json!({})),
    ] {
        let reply = tx(&gateway, &other, &id, action, body).await;
        assert_status(&reply, StatusCode::NOT_FOUND, "transaction_not_found");
    }
    // Still the owner's, untouched.
    assert_eq!(tx_query(&gateway, &key, &id, "select 1").await.status, 200);
    assert_eq!(
        tx(&gateway, &key, &id, "commit", json!({})).await.status,
        200
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_transactions_is_enforced_with_retry_after() {
    let (gateway, key, _) = gateway_for("", "pool_size = 5\nmax_transactions = 2").await;
    let first = begin(&gateway, &key, json!({})).await;
    let _second = begin(&gateway, &key, json!({})).await;
    let third = gateway
        .client
        .post("/v1/transactions", &key, &json!({}))
        .await;
    assert_status(
        &third,
        StatusCode::SERVICE_UNAVAILABLE,
        "too_many_transactions",
    );
    assert!(third.retry_after().is_some());
    // One-shot queries still run.
    assert_eq!(gateway.client.select_one_status(&key).await, 200);
    tx(&gateway, &key, &first, "rollback", json!({})).await;
    let _third = begin(&gateway, &key, json!({})).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_mid_statement_cancels_it_but_keeps_the_transaction() {
    let (gateway, key, db) = gateway_for(ACCOUNTS, "").await;
    let id = begin(&gateway, &key, json!({"idleTimeoutMs": 5000})).await;
    tx_query(&gateway, &key, &id, "insert into accounts values (9, 9)").await;
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let body = json!({"sql": "select pg_sleep(30) /* vanish */"}).to_string();
    let request = format!(
        "POST /v1/transactions/{id}/query HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    drop(stream);
    let admin = direct(&db).await;
    let gone = Instant::now();
    loop {
        let running: i64 = admin
            .query_one("select count(*) from pg_stat_activity where query like '%/* vanish */%' and state = 'active' and pid <> pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        if running == 0 {
            break;
        }
        assert!(
            gone.elapsed() < Duration::from_secs(2),
            "the statement was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The transaction is still there — failed by the cancel, as in Postgres — until rollback.
    let deadline = Instant::now() + Duration::from_secs(5);
    let reply = loop {
        let reply = tx_query(&gateway, &key, &id, "select 1").await;
        if reply.status != 409 || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(reply.json()["error"]["code"], "25P02", "{}", reply.text);
    assert_eq!(
        tx(&gateway, &key, &id, "rollback", json!({})).await.json()["command"],
        "ROLLBACK"
    );
    assert_eq!(
        count(&db, "select count(*) from accounts where id = 9").await,
        0
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_transactions_do_not_starve_one_shot_queries() {
    let (gateway, key, db) = gateway_for(
        "create table events (client int, n int);",
        "pool_size = 6\nmax_transactions = 50\nrate_per_second = 100000\nburst = 100000\nqueue_timeout_ms = 10000",
    )
    .await;
    let admin = direct(&db).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..200)
        .map(|client| {
            let (http, key) = (gateway.client.clone(), key.clone());
            tokio::spawn(async move {
                loop {
                    let reply = http.post("/v1/transactions", &key, &json!({})).await;
                    if reply.status == 503 {
                        assert_eq!(reply.kind(), "too_many_transactions", "{}", reply.text);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    assert_eq!(reply.status, 201, "{}", reply.text);
                    let id = reply.json()["id"].as_str().unwrap().to_owned();
                    let path = |a: &str| format!("/v1/transactions/{id}/{a}");
                    let insert =
                        json!({"sql": "insert into events values ($1, 1)", "params": [client]});
                    assert_eq!(http.post(&path("query"), &key, &insert).await.status, 200);
                    assert_eq!(
                        http.post(
                            &path("query"),
                            &key,
                            &json!({"sql": "select pg_sleep(0.01)"})
                        )
                        .await
                        .status,
                        200
                    );
                    assert_eq!(
                        http.post(&path("commit"), &key, &json!({})).await.status,
                        200
                    );
                    return;
                }
            })
        })
        .collect();
    // Meanwhile one-shot queries keep being served, promptly.
    let mut slowest = Duration::ZERO;
    let mut served = 0;
    let mut peak = 0;
    while clients.iter().any(|c| !c.is_finished()) {
        let started = Instant::now();
        let reply = gateway
            .client
            .query(&key, "select count(*) from events", json!([]))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        slowest = slowest.max(started.elapsed());
        served += 1;
        peak = peak.max(gateway_backends_in(&admin, &db).await);
    }
    for client in clients {
        client.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        count(&db, "select count(*) from events").await,
        200,
        "every transaction committed"
    );
    assert!(served > 0);
    assert!(
        slowest < Duration::from_secs(2),
        "a one-shot query waited {slowest:?}"
    );
    assert!(peak <= 6, "{peak} backends for a pool of 6");
    gateway.stop().await;
}

async fn gateway_backends_in(admin: &tokio_postgres::Client, db: &str) -> i64 {
    admin
        .query_one("select count(*) from pg_stat_activity where datname = $1 and application_name like 'sluice/%'", &[&db])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_an_open_transaction_to_finish() {
    let (gateway, key, db) = gateway_for(ACCOUNTS, "").await;
    let client = gateway.client.clone();
    let id = begin(&gateway, &key, json!({})).await;
    tx_query(&gateway, &key, &id, "insert into accounts values (5, 5)").await;
    let stopping = tokio::spawn(gateway.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !stopping.is_finished(),
        "the drain waits for the open transaction"
    );
    let commit = client
        .post(&format!("/v1/transactions/{id}/commit"), &key, &json!({}))
        .await;
    assert_eq!(commit.json()["command"], "COMMIT");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("stops once it committed")
        .unwrap();
    assert_eq!(
        count(&db, "select count(*) from accounts where id = 5").await,
        1
    );
}

/// Guards a race the latency benchmark hit: the slot of a finished transaction was given back
/// only when its watcher task got to run, so a tenant with one slot could see
/// `too_many_transactions` on back-to-back transactions. Over HTTP the watcher usually wins the
/// race anyway, so this test catches a regression only under load; the fix (the slot is freed
/// in `Transactions::forget`, synchronously) is what makes it hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_transactions_reuse_the_slot_at_once() {
    let (gateway, key, _) = gateway_for("", "pool_size = 2\nmax_transactions = 1").await;
    for _ in 0..50 {
        let id = begin(&gateway, &key, json!({})).await;
        assert_eq!(
            tx(&gateway, &key, &id, "commit", json!({})).await.status,
            200
        );
    }
    gateway.stop().await;
}
