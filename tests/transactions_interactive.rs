//! Interactive transactions (`/v1/transactions…`) while they live: isolation until commit,
//! rollback, savepoints and failed statements as in Postgres, one call at a time (409), and
//! ids that only their tenant can see.

mod common;

use common::*;
use http::StatusCode;
use serde_json::json;

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
async fn a_second_call_while_one_runs_gets_409() {
    let (gateway, key, db) = gateway_for(ACCOUNTS, "").await;
    let id = begin(&gateway, &key, json!({})).await;
    let running = {
        let (client, key, id) = (gateway.client.clone(), key.clone(), id.clone());
        tokio::spawn(async move {
            client
                .post(
                    &format!("/v1/transactions/{id}/query"),
                    &key,
                    &json!({"sql": "select pg_sleep(2) /* busy */"}),
                )
                .await
        })
    };
    wait_running(&db, "/* busy */", 1).await;
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
