//! The budget holds against what attacks found (issue 11, items 7 and 10): clients hanging up
//! while their statement runs — one whose first cancel is swallowed, one whose backend ignores
//! every cancel for a while — a reload that changes where an upstream points, a Postgres
//! restart with a lower connection limit, and two upstreams on one server. Each test samples
//! `pg_stat_activity` for the gateway's backends throughout.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use sluice::dev::{TempPostgres, TempPostgresOptions};

/// A statement whose first cancels are swallowed — as when the cancel reaches the backend
/// before the statement has started — followed by a long sleep that a cancel would end.
const LATE_SLEEP: &str = "
create function late_sleep() returns void language plpgsql as $$
declare until timestamptz := clock_timestamp() + interval '1 second';
begin
  while clock_timestamp() < until loop
    begin perform pg_sleep(0.05); exception when query_canceled then null; end;
  end loop;
  perform pg_sleep(20);
end $$;
create function stubborn(secs float) returns void language plpgsql as $$
declare until timestamptz := clock_timestamp() + secs * interval '1 second';
begin
  while clock_timestamp() < until loop
    begin perform pg_sleep(0.05); exception when query_canceled then null; end;
  end loop;
end $$;";

/// Sends a query over a raw connection and hangs up after `after`: when the client hangs up
/// (before, as or after the statement starts) is the scenario, hence a sleep.
async fn hang_up_during(gateway: &Gateway, key: &str, sql: &str, after: Duration) {
    let stream = send_raw(gateway.addr, key, "/v1/query", &json!({ "sql": sql })).await;
    tokio::time::sleep(after).await;
    drop(stream);
}

/// Gateway backends on `db`, and those of them running `pattern`.
async fn backends(admin: &tokio_postgres::Client, db: &str, pattern: &str) -> (i64, i64) {
    let row = admin
        .query_one(
            "select count(*), count(*) filter (where state = 'active' and query like $2) \
             from pg_stat_activity where datname = $1 and application_name like 'sluice/%'",
            &[&db, &pattern],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Keeps `select 1` requests coming (each wants a connection), until stopped.
fn keep_asking(
    gateway: &Gateway,
    key: &str,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let (client, key, stop) = (gateway.client.clone(), key.to_owned(), stop.clone());
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let _ = client.query(&key, "select 1", json!([])).await;
            // The pace of the asking client.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// The gauge, read with the admin key that `/metrics` on the public listener asks for.
async fn stuck_gauge(gateway: &Gateway, admin_key: &str) -> i64 {
    Scrape::take(&gateway.client, Some(admin_key))
        .await
        .value("sluice_upstream_stuck_connections", &[]) as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_hanging_up_when_the_first_cancel_is_lost_never_push_backends_above_the_budget() {
    let db = database(LATE_SLEEP).await;
    let (key, hash) = key("acme");
    let gateway = Gateway::start(&config(
        &db,
        &hash,
        "pool_size = 2\nqueue_timeout_ms = 300\nstatement_timeout_ms = 60000",
        "max_connections = 2",
    ))
    .await;
    let admin = direct(&db).await;
    let stop = Arc::new(AtomicBool::new(false));
    let asking = keep_asking(&gateway, &key, &stop);
    let peak = Arc::new(AtomicI64::new(0));
    let started = Instant::now();
    // Two waves of clients that hang up while their statement runs: plain sleeps (cancelled
    // at once) and sleeps whose first cancel is swallowed.
    for wave in 0..2u64 {
        let mut hangups = Vec::new();
        for i in 0..2u64 {
            let sql = if i == 0 {
                "select late_sleep() /* hangup */"
            } else {
                "select pg_sleep(20) /* hangup */"
            };
            hangups.push(hang_up_during(
                &gateway,
                &key,
                sql,
                Duration::from_millis(300 + 40 * (wave + i)),
            ));
        }
        futures::future::join_all(hangups).await;
        let (all, _) = backends(&admin, &db, "%/* hangup */%").await;
        peak.fetch_max(all, Ordering::Relaxed);
    }
    let hung_up = Instant::now();
    // Every statement whose client hung up ends within a few seconds (the cancel is sent
    // again until it does), and the gateway never holds more than its budget meanwhile.
    let mut ended_at = None;
    while hung_up.elapsed() < Duration::from_secs(6) {
        let (all, running) = backends(&admin, &db, "%/* hangup */%").await;
        peak.fetch_max(all, Ordering::Relaxed);
        if running == 0 && ended_at.is_none() {
            ended_at = Some(hung_up.elapsed());
        }
        assert!(
            running == 0 || hung_up.elapsed() < Duration::from_secs(4),
            "a statement whose client hung up still runs {:?} later",
            hung_up.elapsed()
        );
        // The sampling interval of a fixed observation window.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.store(true, Ordering::Relaxed);
    asking.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);
    assert!(peak <= 2, "{peak} backends on a budget of 2");
    assert!(
        ended_at.is_some(),
        "statements ended ({:?})",
        started.elapsed()
    );
    assert_eq!(gateway.client.select_one_status(&key).await, 200);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_ignores_cancels_keeps_its_slot_and_is_reported_stuck() {
    let db = database(LATE_SLEEP).await;
    let (key, hash) = key("acme");
    let (toml, admin_key) = with_admin(&config(
        &db,
        &hash,
        "pool_size = 2\nqueue_timeout_ms = 300\nstatement_timeout_ms = 60000",
        "max_connections = 2",
    ));
    let gateway = Gateway::start(&toml).await;
    let admin = direct(&db).await;
    let stop = Arc::new(AtomicBool::new(false));
    // Both connections run a statement that ignores cancels for 13 s; their clients hang up.
    let body = json!({ "sql": "select stubborn(13) /* stubborn */" });
    let clients = [
        send_raw(gateway.addr, &key, "/v1/query", &body).await,
        send_raw(gateway.addr, &key, "/v1/query", &body).await,
    ];
    wait_running(&db, "/* stubborn */", 2).await;
    drop(clients);
    let asking = keep_asking(&gateway, &key, &stop);
    let hung_up = Instant::now();
    let mut peak = 0;
    let mut stuck_seen = 0;
    loop {
        let (all, running) = backends(&admin, &db, "%/* stubborn */%").await;
        peak = peak.max(all);
        if hung_up.elapsed() > Duration::from_secs(11) && stuck_seen == 0 {
            stuck_seen = stuck_gauge(&gateway, &admin_key).await;
        }
        if running == 0 && hung_up.elapsed() > Duration::from_secs(2) {
            break;
        }
        assert!(
            hung_up.elapsed() < Duration::from_secs(30),
            "the stubborn statements never ended"
        );
        // The sampling interval: the peak is measured throughout.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past the recovery and close waits (10 s) the slots stayed taken: no third backend.
    assert!(peak <= 2, "{peak} backends on a budget of 2");
    assert!(
        stuck_seen >= 1,
        "sluice_upstream_stuck_connections reported them ({stuck_seen})"
    );
    // Once the backends end, the slots come back and service resumes.
    wait_until("service resumed", async || {
        gateway.client.select_one_status(&key).await == 200
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    asking.await.unwrap();
    assert_eq!(stuck_gauge(&gateway, &admin_key).await, 0);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_upstreams_address_shares_one_budget_with_the_old_connections() {
    let db = database("").await;
    let (key, hash) = key("acme");
    let (base, admin_key) = with_admin(&config(
        &db,
        &hash,
        "pool_size = 3\nqueue_timeout_ms = 5000\nrate_per_second = 100000\nburst = 100000",
        "max_connections = 3",
    ));
    let file = ConfigFile::new(&base);
    let gateway = Gateway::start_file(file.path()).await;
    let admin = Arc::new(direct(&db).await);
    // Three statements hold the whole budget across the reload.
    let busy: Vec<_> = (0..3)
        .map(|_| {
            let (client, key) = (gateway.client.clone(), key.clone());
            tokio::spawn(async move {
                client
                    .query(&key, "select pg_sleep(2) /* old */", json!([]))
                    .await
            })
        })
        .collect();
    wait_running(&db, "/* old */", 3).await;
    // The upstream now points elsewhere (same server, another TLS mode: a new identity).
    let url = pg_url(&db);
    file.write(&base.replace(&url, &format!("{url}?sslmode=disable")));
    let reload = gateway.admin_reload(&admin_key).await;
    assert_eq!(reload.status, 200, "{}", reload.text);
    // New requests while the old connections drain: never more than 3 backends in all.
    let load: Vec<_> = (0..6)
        .map(|_| {
            let (client, key) = (gateway.client.clone(), key.clone());
            tokio::spawn(async move { client.query(&key, "select pg_sleep(0.3)", json!([])).await })
        })
        .collect();
    let reloaded = Instant::now();
    let mut peak = 0;
    while reloaded.elapsed() < Duration::from_secs(4) {
        peak = peak.max(backends(&admin, &db, "").await.0);
        // The sampling interval of a fixed observation window.
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    for reply in futures::future::join_all(busy).await {
        assert_eq!(reply.unwrap().status, 200);
    }
    for reply in futures::future::join_all(load).await {
        assert_eq!(reply.unwrap().status, 200);
    }
    assert!(
        peak <= 3,
        "{peak} backends on a budget of 3 across the reload"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_on_one_server_are_checked_against_its_limit_together() {
    let db = database("").await;
    let (_, hash) = key("acme");
    // The shared cluster allows 57 (60 − 3 reserved): 30 + 30 does not fit, each alone does.
    let two = config(&db, &hash, "upstream = \"main\"", "max_connections = 30").replace(
        "[[tenants]]",
        &format!(
            "[[upstreams]]\nname = \"second\"\nurl = \"{}\"\nmax_connections = 30\n\n[[tenants]]",
            pg_url(&db)
        ),
    );
    let refused = Gateway::try_start(&two)
        .await
        .err()
        .expect("refused at start");
    assert!(
        refused.contains("60 together") && refused.contains("allows 57"),
        "{refused}"
    );
    // And in `sluice check`.
    let file = ConfigFile::new(&two);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check")
        .arg("--config")
        .arg(file.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(stdout.contains("60 together"), "{stdout}");
    // 28 + 28 fits.
    let fits = two.replace("max_connections = 30", "max_connections = 28");
    let gateway = Gateway::start(&fits).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_limit_is_read_again_after_postgres_restarts_with_a_lower_one() {
    // A cluster of this test's own, restarted with a lower max_connections on the same port
    // and password.
    let password = format!("pw{:08x}", rand::random::<u32>());
    let start = move |max: usize, port: Option<u16>| {
        let password = password.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                TempPostgres::start(TempPostgresOptions {
                    max_connections: max,
                    port,
                    password: Some(password),
                    ..TempPostgresOptions::default()
                })
                .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let mut first = start(30, None).await;
    let port = first.port();
    let url = first.url("postgres");
    let (key, hash) = key("acme");
    let (admin_key, admin_hash) = common::key("admin");
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_timeout_ms = 5000\nadmin_keys = [\"{admin_hash}\"]\n\n\
         [[upstreams]]\nname = \"main\"\nurl = \"{url}\"\nmax_connections = 20\n\n\
         [[tenants]]\nid = \"acme\"\napi_keys = [\"{hash}\"]\npool_size = 4\nqueue_timeout_ms = 2000\n"
    );
    let gateway = Gateway::start(&toml).await;
    assert_eq!(gateway.client.select_one_status(&key).await, 200);
    tokio::task::spawn_blocking(move || first.stop())
        .await
        .unwrap();
    // Back with max_connections 20: it allows 17, below the budget of 20.
    let second = start(20, Some(port)).await;
    // Requests find the budget refused (upstream_unavailable), and the admin view says why.
    let reply = wait_for(
        "the gateway to refuse a budget the restarted server cannot hold",
        async || {
            let reply = gateway.client.query(&key, "select 1", json!([])).await;
            let pools = gateway.client.admin_pools(&admin_key).await;
            (reply.status == 503 && pools.to_string().contains("allows 17")).then_some(reply)
        },
    )
    .await;
    assert_eq!(reply.kind(), "upstream_unavailable", "{}", reply.text);
    gateway.stop().await;
    drop(second);
}
