//! No request sees another's state (promise 3): with `pool_size = 1` every request reuses the
//! same connection, so state one request leaves behind would be visible to the next. Also:
//! clients that vanish mid-statement (the statement is cancelled, the connection recovered),
//! and the reaper's lifetime and idle limits.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// One connection for the tenant, so state could only leak by being left on it.
async fn one_connection(setup: &str) -> (Gateway, String, String) {
    gateway_for(setup, "pool_size = 1").await
}

async fn backend_pid(gateway: &Gateway, key: &str) -> Value {
    single_value(gateway, key, "select pg_backend_pid()").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_do_not_leak() {
    let (gateway, key, _) = one_connection("create role other_role").await;
    let pid = backend_pid(&gateway, &key).await;
    let cases = [
        (
            "set statement_timeout = 1234",
            "select current_setting('statement_timeout')",
            json!("15s"),
        ),
        (
            "set TimeZone = 'Asia/Tokyo'",
            "select current_setting('TimeZone')",
            json!("UTC"),
        ),
        (
            "set search_path = pg_catalog",
            "select current_setting('search_path')",
            json!("\"$user\", public"),
        ),
        (
            "select set_config('app.user_id', '42', false)",
            "select coalesce(current_setting('app.user_id', true), '')",
            json!(""),
        ),
        (
            "set role other_role",
            "select current_user::text",
            json!("postgres"),
        ),
        (
            "set session authorization other_role",
            "select session_user::text",
            json!("postgres"),
        ),
        (
            "set DateStyle = 'German'",
            "select '2024-01-31'::date::text",
            json!("2024-01-31"),
        ),
    ];
    for (dirty, check, clean) in cases {
        let reply = gateway.client.query(&key, dirty, json!([])).await;
        assert_eq!(reply.status, 200, "{dirty}: {}", reply.text);
        assert_eq!(
            single_value(&gateway, &key, check).await,
            clean,
            "after `{dirty}`"
        );
    }
    // Same connection throughout: the state was reset, not dodged by a new connection.
    assert_eq!(backend_pid(&gateway, &key).await, pid);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_that_changes_settings_is_caught_too() {
    let setup = "create function sneaky() returns int language plpgsql as $$ \
                 begin perform set_config('TimeZone', 'Asia/Tokyo', false); \
                 perform set_config('app.secret', 'leaked', false); return 1; end $$;";
    let (gateway, key, _) = one_connection(setup).await;
    assert_eq!(
        single_value(&gateway, &key, "select sneaky()").await,
        json!(1)
    );
    assert_eq!(
        single_value(&gateway, &key, "select current_setting('TimeZone')").await,
        json!("UTC")
    );
    assert_eq!(
        single_value(
            &gateway,
            &key,
            "select coalesce(current_setting('app.secret', true), '')"
        )
        .await,
        json!("")
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_tables_prepared_statements_cursors_and_listens_do_not_leak() {
    let setup = "create function prepares() returns int language plpgsql as $$ \
                 begin execute 'prepare hidden as select 2'; return 1; end $$;";
    let (gateway, key, _) = one_connection(setup).await;
    let pid = backend_pid(&gateway, &key).await;
    let cases = [
        (
            "create temp table scratch (a int)",
            "select count(*) from pg_class where relname = 'scratch'",
        ),
        (
            "select 1 into temp table scratch2",
            "select count(*) from pg_class where relname = 'scratch2'",
        ),
        (
            "prepare mine as select 1",
            "select count(*) from pg_prepared_statements where from_sql",
        ),
        (
            "select prepares()",
            "select count(*) from pg_prepared_statements where from_sql",
        ),
        // The unnamed portal running the check itself is listed too.
        (
            "declare held cursor with hold for select 1",
            "select count(*) from pg_cursors where name <> ''",
        ),
        (
            "listen some_channel",
            "select count(*) from pg_listening_channels()",
        ),
    ];
    for (dirty, check) in cases {
        let reply = gateway.client.query(&key, dirty, json!([])).await;
        assert_eq!(reply.status, 200, "{dirty}: {}", reply.text);
        assert_eq!(
            single_value(&gateway, &key, check).await,
            json!("0"),
            "after `{dirty}`"
        );
    }
    assert_eq!(backend_pid(&gateway, &key).await, pid);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisory_locks_and_open_transactions_do_not_leak() {
    let (gateway, key, db) =
        one_connection("create table t (a int); insert into t values (1);").await;
    let admin = direct(&db).await;
    // A session-level advisory lock is released before the connection is reused.
    assert_eq!(
        single_value(&gateway, &key, "select pg_advisory_lock(4242)").await,
        json!("")
    );
    single_value(&gateway, &key, "select 1").await;
    let free: bool = admin
        .query_one("select pg_try_advisory_lock(4242)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(free, "the gateway's advisory lock was released");
    admin
        .execute("select pg_advisory_unlock(4242)", &[])
        .await
        .unwrap();

    // A transaction opened by a one-shot statement is rolled back, and its row lock released.
    let reply = gateway.client.query(&key, "begin", json!([])).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let reply = gateway
        .client
        .query(&key, "select a from t for update", json!([]))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    // Had the `begin` survived, the row lock taken above would have given the transaction an id.
    let fresh = single_value(
        &gateway,
        &key,
        "select pg_current_xact_id_if_assigned() is null",
    )
    .await;
    assert_eq!(
        fresh,
        json!(true),
        "each statement runs in its own transaction"
    );
    let locked: i64 = admin
        .query_one("select count(*) from pg_stat_activity where datname = current_database() and state like 'idle in transaction%'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(locked, 0);
    admin
        .batch_execute("set lock_timeout = '1s'; select * from t for update nowait")
        .await
        .unwrap();
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_prepared_statements_survive_a_reset() {
    let (gateway, key, _) = one_connection("").await;
    single_value(&gateway, &key, "select 'warm' as w").await;
    assert_eq!(
        gateway
            .client
            .query(&key, "set work_mem = '8MB'", json!([]))
            .await
            .status,
        200
    );
    // Reset happened (work_mem is back), yet the warm statement is still prepared.
    assert_eq!(
        single_value(&gateway, &key, "select current_setting('work_mem')").await,
        json!("4MB")
    );
    let kept = single_value(&gateway, &key, "select count(*) from pg_prepared_statements where not from_sql and statement = 'select ''warm'' as w'").await;
    assert_eq!(kept, json!("1"));
    gateway.stop().await;
}

/// Sends a request on a raw socket and closes it after `after`, before the answer: when the
/// client leaves (before, during or after the statement) is the scenario, hence a sleep.
async fn abandon(gateway: &Gateway, key: &str, sql: &str, after: Duration) {
    let stream = send_raw(gateway.addr, key, "/v1/query", &json!({ "sql": sql })).await;
    tokio::time::sleep(after).await;
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_statement_gets_its_statement_cancelled() {
    let (gateway, key, db) = one_connection("").await;
    let body = json!({ "sql": "select pg_sleep(30) /* abandoned */" });
    let client = send_raw(gateway.addr, &key, "/v1/query", &body).await;
    wait_running(&db, "/* abandoned */", 1).await;
    drop(client);
    let disconnected = Instant::now();
    wait_not_running(&db, "/* abandoned */").await;
    let cancelled_at = disconnected.elapsed();
    assert!(
        cancelled_at < Duration::from_secs(1),
        "cancelled within a second, took {cancelled_at:?}"
    );
    // The one connection was recovered and serves the next request.
    assert_eq!(
        single_value(&gateway, &key, "select 'next'").await,
        json!("next")
    );
    gateway.stop().await;
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_abandoned_requests_leak_nothing() {
    let (gateway, key, db) = gateway_for("", "pool_size = 4").await;
    let admin = direct(&db).await;
    let round = |n: usize| {
        let futures: Vec<_> = (0..n)
            .map(|i| {
                let (gateway, key) = (&gateway, &key);
                async move {
                    // Abandoned at different moments: before, during and after the statement.
                    let after = Duration::from_millis((i % 7) as u64 * 15);
                    abandon(gateway, key, "select pg_sleep(0.05) /* thousand */", after).await;
                }
            })
            .collect();
        futures::future::join_all(futures)
    };
    // Warm up (allocator arenas, connection buffers), then measure.
    for _ in 0..2 {
        round(50).await;
    }
    wait_not_running(&db, "/* thousand */").await;
    let before = resident_bytes();
    for _ in 0..20 {
        round(50).await;
    }
    // Everything settles: no statement left running, connections back in the pool.
    wait_not_running(&db, "/* thousand */").await;
    let backends = backends_in(&admin, &db).await;
    assert!(backends <= 4, "{backends} gateway backends for a pool of 4");
    let stuck: i64 = admin
        .query_one("select count(*) from pg_stat_activity where datname = current_database() and state <> 'idle' and pid <> pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stuck, 0,
        "no backend stuck mid-statement or in a transaction"
    );
    // All four connections are usable at once: none leaked.
    let concurrent: Vec<_> = (0..4)
        .map(|_| {
            gateway
                .client
                .query(&key, "select pg_sleep(0.2)", json!([]))
        })
        .collect();
    for reply in futures::future::join_all(concurrent).await {
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    let growth = resident_bytes().saturating_sub(before);
    assert!(
        growth < 16 * 1024 * 1024,
        "memory grew by {growth} bytes over 1,000 abandoned requests"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_closes_idle_and_old_connections() {
    let (gateway, key, db) = {
        let db = database("").await;
        let (key, hash) = key("acme");
        let toml = config(
            &db,
            &hash,
            "pool_size = 2",
            "server_idle_timeout_ms = 1500\nserver_lifetime_ms = 600000",
        );
        (Gateway::start(&toml).await, key, db)
    };
    let admin = direct(&db).await;
    let first = backend_pid(&gateway, &key).await;
    assert_eq!(backends_in(&admin, &db).await, 1);
    // Idle past the timeout: closed by the reaper.
    wait_until("the reaper closed the idle connection", async || {
        backends_in(&admin, &db).await == 0
    })
    .await;
    assert_ne!(
        backend_pid(&gateway, &key).await,
        first,
        "a new connection serves the next request"
    );
    gateway.stop().await;

    // Lifetime: a connection older than server_lifetime_ms is replaced once it is idle.
    let db = database("").await;
    let (key, hash) = common::key("acme");
    let toml = config(&db, &hash, "pool_size = 1", "server_lifetime_ms = 1000");
    let gateway = Gateway::start(&toml).await;
    let first = backend_pid(&gateway, &key).await;
    wait_until("the old connection replaced", async || {
        backend_pid(&gateway, &key).await != first
    })
    .await;
    gateway.stop().await;
}
