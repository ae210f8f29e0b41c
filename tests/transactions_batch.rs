//! Atomic batches and scripts over `/v1/batch`: every statement committed or none, isolation
//! and read-only modes, what a batch refuses before running anything, and scripts with and
//! without a transaction (DDL, `CREATE INDEX CONCURRENTLY`).

mod common;

use common::*;
use http::StatusCode;
use serde_json::json;

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
