//! Issue 11, item 8: interactive transactions never leak a slot, never tell one tenant about
//! another's ids, never exceed a limit across a reload, and never take a tenant's last
//! connection; an expiry that cuts a statement short reads as the expiry.

mod common;

use common::*;
use http::StatusCode;
use serde_json::{Value, json};

/// Bug: a transaction whose backend was terminated mid-call stayed registered with its slot;
/// after `max_transaction_connections` of them every begin got 503 until restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_connection_dies_frees_its_slot() {
    // pool_size 4: at most 3 transactions (max_transaction_connections = pool_size - 1).
    let (gateway, key, db) = gateway_for("", "pool_size = 4\nstatement_timeout_ms = 60000").await;
    let c = &gateway.client;
    for round in 0..5 {
        let id = begin(c, &key, json!({})).await;
        let marker = format!("doomed_{round}");
        let call = {
            let (c, key, id) = (c.clone(), key.clone(), id.clone());
            let sql = format!("select pg_sleep(30) /* {marker} */");
            tokio::spawn(async move { tx_query(&c, &key, &id, &sql).await })
        };
        let pids = wait_running(&db, &marker, 1).await;
        direct(&db)
            .await
            .execute("select pg_terminate_backend($1)", &[&pids[0]])
            .await
            .unwrap();
        let reply = call.await.unwrap();
        assert_status(&reply, StatusCode::BAD_GATEWAY, "connection_lost");
        // Ended: every later call reads as an ended (unknown) transaction.
        for action in ["rollback", "commit"] {
            let after = tx_end(c, &key, &id, action).await;
            assert_status(&after, StatusCode::NOT_FOUND, "transaction_not_found");
            assert!(
                after.json()["error"].get("reason").is_none(),
                "{}",
                after.text
            );
        }
        let after = tx_query(c, &key, &id, "select 1").await;
        assert_status(&after, StatusCode::NOT_FOUND, "transaction_not_found");
    }
    // Every slot is free: the full allowance opens, and one-shot queries still run.
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(begin(c, &key, json!({})).await);
        }
        ids
    };
    assert_eq!(c.select_one_status(&key).await, 200);
    for id in &ids {
        assert_eq!(tx_end(c, &key, id, "rollback").await.status, 200);
    }
    gateway.stop().await;
}

/// Bug: when the lifetime ended during a statement, the call answered 400 57014 (the cancel),
/// not what the API promises for an expired transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifetime_expiry_mid_statement_answers_expired() {
    let (gateway, key, _) = gateway_for(
        "",
        "transaction_max_ms = 1000\ntransaction_idle_timeout_ms = 1000\nstatement_timeout_ms = 60000",
    )
    .await;
    let c = &gateway.client;
    let id = begin(c, &key, json!({})).await;
    let reply = tx_query(c, &key, &id, "select pg_sleep(20)").await;
    assert_status(&reply, StatusCode::NOT_FOUND, "transaction_not_found");
    assert_eq!(reply.json()["error"]["reason"], "expired", "{}", reply.text);
    let later = tx_end(c, &key, &id, "commit").await;
    assert_eq!(later.text, reply.text, "a later call answers alike");
    gateway.stop().await;
}

fn two_tenants_config(db: &str, acme: &str, beta: &str, admin: &str) -> String {
    config(db, acme, "", "").replace("[server]", &format!("[server]\nadmin_keys = [\"{admin}\"]"))
        + &format!("\n[[tenants]]\nid = \"beta\"\napi_keys = [\"{beta}\"]\npool_size = 2\n")
}

async fn transactions_open(c: &Client, admin: &str, tenant: &str) -> u64 {
    c.admin_tenant(admin, tenant).await["transactionsOpen"]
        .as_u64()
        .unwrap()
}

/// Bug: another tenant's *expired* id answered `"reason": "expired"` where an unknown id has
/// no reason: an oracle for which ids exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_expired_id_answers_exactly_as_an_unknown_one() {
    let db = database("").await;
    let (acme, acme_hash) = key("acme");
    let (beta, beta_hash) = key("beta");
    let (admin, admin_hash) = key("admin");
    let gateway = Gateway::start(&two_tenants_config(
        &db,
        &acme_hash,
        &beta_hash,
        &admin_hash,
    ))
    .await;
    let c = &gateway.client;
    let id = begin(c, &acme, json!({ "idleTimeoutMs": 100 })).await;
    wait_until("the transaction to expire", async || {
        transactions_open(c, &admin, "acme").await == 0
    })
    .await;
    let own = tx_end(c, &acme, &id, "rollback").await;
    assert_eq!(own.json()["error"]["reason"], "expired", "{}", own.text);

    let unknown = format!("tx_{}", "A".repeat(32));
    for action in ["query", "commit", "rollback"] {
        let body: Value = if action == "query" {
            json!({ "sql": "select 1" })
        } else {
            json!({})
        };
        let path = |id: &str| format!("/v1/transactions/{id}/{action}");
        let foreign = c.post(&path(&id), &beta, &body).await;
        let never = c.post(&path(&unknown), &beta, &body).await;
        assert_eq!(foreign.status, 404, "{}", foreign.text);
        assert_eq!(
            (foreign.status, &foreign.text),
            (never.status, &never.text),
            "{action}: a foreign expired id must read as an unknown one"
        );
    }
    gateway.stop().await;
}

/// Bug: a reload that changed `max_transactions` started a fresh count, so the transactions
/// opened before it and after it together exceeded the new limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_lowers_max_transactions_never_lets_old_and_new_exceed_it() {
    let db = database("").await;
    let (key, hash) = key("acme");
    let (base, admin) = with_admin(&config(&db, &hash, "", ""));
    let file =
        ConfigFile::new(&base.replace("pool_size = 4", "pool_size = 6\nmax_transactions = 4"));
    let gateway = Gateway::start_file(file.path()).await;
    let c = &gateway.client;
    let mut old = Vec::new();
    for _ in 0..4 {
        old.push(begin(c, &key, json!({})).await);
    }
    assert_eq!(begin_reply(c, &key, json!({})).await.status, 503);

    file.write(&base.replace("pool_size = 4", "pool_size = 6\nmax_transactions = 2"));
    let reload = c.admin_reload(&admin).await;
    assert_eq!(reload.status, 200, "{}", reload.text);

    // Four open under a limit of two: no begin until fewer than two remain.
    for expected_open in [4, 3, 2] {
        let refused = begin_reply(c, &key, json!({})).await;
        assert_status(
            &refused,
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_transactions",
        );
        assert_eq!(
            transactions_open(c, &admin, "acme").await,
            expected_open,
            "never more than were open"
        );
        let id = old.pop().unwrap();
        assert_eq!(tx_end(c, &key, &id, "commit").await.status, 200);
    }
    let new = begin(c, &key, json!({})).await;
    assert_status(
        &begin_reply(c, &key, json!({})).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "too_many_transactions",
    );
    assert_eq!(transactions_open(c, &admin, "acme").await, 2);
    for id in old.iter().chain([&new]) {
        assert_eq!(tx_end(c, &key, id, "rollback").await.status, 200);
    }
    gateway.stop().await;
}

/// Bug: with `pool_size = 1` a transaction took the only connection and one-shot queries
/// waited for it (pool_timeout); and `too_many_transactions` could say `retryAfterMs: 0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_never_take_a_tenants_last_connection() {
    let (gateway, key, _) = gateway_for("", "pool_size = 1\nqueue_timeout_ms = 500").await;
    let c = &gateway.client;
    let refused = begin_reply(c, &key, json!({})).await;
    assert_status(
        &refused,
        StatusCode::SERVICE_UNAVAILABLE,
        "too_many_transactions",
    );
    assert!(
        refused.retry_after().is_some_and(|s| s >= 1),
        "{:?}",
        refused.headers
    );
    assert!(
        refused.json()["error"]["retryAfterMs"].as_u64().unwrap() >= 1000,
        "{}",
        refused.text
    );
    assert_eq!(c.select_one_status(&key).await, 200);
    gateway.stop().await;

    // pool_size 2 with an explicit max_transaction_connections = 2: still one left over.
    let (gateway, key, _) = gateway_for(
        "",
        "pool_size = 2\nmax_transaction_connections = 2\nqueue_timeout_ms = 500",
    )
    .await;
    let c = &gateway.client;
    let id = begin(c, &key, json!({})).await;
    let refused = begin_reply(c, &key, json!({})).await;
    assert_status(
        &refused,
        StatusCode::SERVICE_UNAVAILABLE,
        "too_many_transactions",
    );
    let hint = refused.json()["error"]["retryAfterMs"].as_u64().unwrap();
    assert!(
        (1000..=5000).contains(&hint),
        "the idle timeout is the hint: {hint}"
    );
    assert_eq!(c.select_one_status(&key).await, 200);
    assert_eq!(tx_end(c, &key, &id, "rollback").await.status, 200);
    gateway.stop().await;
}
