//! What the tests read from Postgres directly to see what the gateway did: counts, the
//! statements running now (`pg_stat_activity`, found by a marker comment in their SQL), and
//! the gateway's backends (counted now, or sampled every few milliseconds for their peak).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{direct, wait_for};

/// The single integer `sql` returns, read over a direct connection to `db`.
pub async fn count(db: &str, sql: &str) -> i64 {
    direct(db).await.query_one(sql, &[]).await.unwrap().get(0)
}

/// Pids of the backends (any database) running a statement whose text contains `marker`.
pub async fn running(db: &str, marker: &str) -> Vec<i32> {
    running_on(&direct(db).await, marker).await
}

/// [`running`] over an existing direct connection.
pub async fn running_on(admin: &tokio_postgres::Client, marker: &str) -> Vec<i32> {
    admin
        .query(
            "select pid from pg_stat_activity where state = 'active' and query like '%' || $1 || '%' \
             and pid <> pg_backend_pid()",
            &[&marker],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Waits until at least `n` statements containing `marker` run; returns their pids.
pub async fn wait_running(db: &str, marker: &str, n: usize) -> Vec<i32> {
    let admin = direct(db).await;
    wait_for(
        &format!("{n} statement(s) {marker:?} running"),
        async || {
            let pids = running_on(&admin, marker).await;
            (pids.len() >= n).then_some(pids)
        },
    )
    .await
}

/// Waits until no statement containing `marker` runs.
pub async fn wait_not_running(db: &str, marker: &str) {
    let admin = direct(db).await;
    super::wait_until(&format!("no statement {marker:?} running"), async || {
        running_on(&admin, marker).await.is_empty()
    })
    .await
}

/// Backends of the gateway (any tenant) connected to `db`.
pub async fn backends_in(admin: &tokio_postgres::Client, db: &str) -> i64 {
    admin
        .query_one(
            "select count(*) from pg_stat_activity where datname = $1 and application_name like 'sluice/%'",
            &[&db],
        )
        .await
        .unwrap()
        .get(0)
}

/// Backends of one tenant of the gateway (`application_name` `sluice/<tenant>`) in the
/// database `admin` is connected to.
pub async fn tenant_backends(admin: &tokio_postgres::Client, tenant: &str) -> i64 {
    admin
        .query_one(
            "select count(*) from pg_stat_activity where application_name = $1 \
             and datname = current_database()",
            &[&format!("sluice/{tenant}")],
        )
        .await
        .unwrap()
        .get(0)
}

/// Samples, every few milliseconds until stopped, how many backends each tenant of the
/// gateway holds in `database`; returns the per-sample counts.
pub fn sample_backends(
    database: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<BTreeMap<String, i64>>> {
    tokio::spawn(async move {
        let admin = direct(&database).await;
        let statement = admin
            .prepare(
                "select application_name, count(*) from pg_stat_activity \
                 where datname = $1 and application_name like 'sluice/%' group by 1",
            )
            .await
            .unwrap();
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let rows = admin.query(&statement, &[&database]).await.unwrap();
            samples.push(
                rows.iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                    .collect(),
            );
            // The sampling interval.
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        samples
    })
}

/// The most backends one sample of [`sample_backends`] saw, over all tenants.
pub fn peak_backends(samples: &[BTreeMap<String, i64>]) -> i64 {
    samples
        .iter()
        .map(|s| s.values().sum::<i64>())
        .max()
        .unwrap_or(0)
}
