//! Faults injected into the real I/O path (src/pg/faults.rs) against a real Postgres: the
//! events the model test feeds the book, produced by real connections. Test code only
//! (`#[cfg(test)]` in `upstream.rs`): the throwaway Postgres of `crate::dev` is not a
//! dependency of the pool.

use std::sync::OnceLock;

use super::*;
use crate::dev::{TempPostgres, TempPostgresOptions};
use crate::pg::faults::{Fault, arm, disarm};

/// One cluster for these tests (its watchdog removes it when the binary exits); each test
/// has its own upstream, and tests that arm faults (keyed by port) take turns.
struct Cluster {
    port: u16,
    url: String,
    _postgres: std::sync::Mutex<TempPostgres>,
}

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let pg = TempPostgres::start(TempPostgresOptions::default()).expect("test Postgres");
        Cluster {
            port: pg.port(),
            url: pg.url("postgres"),
            _postgres: std::sync::Mutex::new(pg),
        }
    })
}

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// These tests read the pool's own status, not its metrics.
struct Uncounted;

impl PoolMetrics for Uncounted {
    fn connect_attempt(&self, _: &str, _: &'static str) {}
    fn connection_closed(&self, _: &str, _: &'static str) {}
}

fn upstream(budget: usize) -> (Arc<Upstream>, u16) {
    let cluster = cluster();
    let url = crate::config::PostgresUrl::parse(&cluster.url).unwrap();
    let connect = ConnectConfig {
        target: url.target,
        user: url.user,
        password: url.password,
        database: url.database,
        tls: crate::pg::TlsConnector::disabled(),
        connect_timeout: Duration::from_secs(5),
        settings: vec![("application_name".into(), "sluice/fault".into())],
        statement_timeout_ms: 0,
        statement_cache_size: 8,
        auth: Default::default(),
    };
    let upstream = Upstream::new(
        UpstreamSettings {
            name: "faulty".into(),
            identity: "faulty".into(),
            limits: Limits {
                budget,
                server_budget: budget,
                server_lifetime: Duration::from_secs(3600),
                server_idle_timeout: Duration::from_secs(600),
            },
            cluster: None,
        },
        vec![TenantSettings {
            id: "t".into(),
            pool_size: budget,
            max_waiting: 8,
            connect: Arc::new(connect),
        }],
        TaskTracker::new(),
        Arc::new(Uncounted),
    );
    (upstream, cluster.port)
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_fails_the_waiter_and_frees_its_slot() {
    let _turn = TURN.lock().await;
    let (upstream, port) = upstream(2);
    arm(port, Fault::ConnectRefused, Some(1));
    let error = upstream.checkout(0, Duration::from_secs(5)).await.err();
    assert!(
        matches!(error, Some(PoolError::Unavailable { .. })),
        "{error:?}"
    );
    assert_eq!(upstream.status().open, 0);
    // After the back-off, the next attempt reaches the server.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let conn = upstream.checkout(0, Duration::from_secs(5)).await.unwrap();
    drop(conn);
    assert_eq!(upstream.status().open, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_cancel_is_sent_again_and_the_connection_recovers() {
    let _turn = TURN.lock().await;
    let (upstream, port) = upstream(1);
    let mut conn = upstream.checkout(0, Duration::from_secs(5)).await.unwrap();
    // The client goes away mid-statement; the first cancel is lost.
    let abandoned = tokio::time::timeout(
        Duration::from_millis(300),
        conn.fetch_text("select pg_sleep(30)", &[]),
    )
    .await;
    assert!(abandoned.is_err());
    arm(port, Fault::CancelLost, Some(1));
    let returned = Instant::now();
    drop(conn);
    // Recovered (well before the 5 s recovery timeout) and reused: still one connection.
    until("the connection to be recovered", || {
        upstream.tenant_status(0).idle == 1
    })
    .await;
    assert!(returned.elapsed() < Duration::from_secs(3));
    let mut conn = upstream.checkout(0, Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        conn.fetch_text("select 1", &[]).await.unwrap()[0][0].as_deref(),
        Some("1")
    );
    drop(conn);
    assert_eq!(upstream.status().open, 1);
    disarm(port, Fault::CancelLost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_that_never_completes_keeps_its_slot_and_is_reported_stuck() {
    let _turn = TURN.lock().await;
    let (upstream, port) = upstream(1);
    let conn = upstream.checkout(0, Duration::from_secs(5)).await.unwrap();
    drop(conn);
    arm(port, Fault::CloseHangs, None);
    // Shutdown closes the idle connection; its backend "never ends".
    upstream.close();
    until("the close to be reported stuck", || {
        upstream.status().stuck == 1
    })
    .await;
    assert_eq!(upstream.status().open, 1, "the slot stays taken");
    disarm(port, Fault::CloseHangs);
    until("the slot to come back", || upstream.status().open == 0).await;
    assert_eq!(upstream.status().stuck, 0);
}

/// Issue 11 item 10: a check-out cancelled during the revalidation ping of a long-idle
/// connection dropped the connection with its slot — the slot came back without a
/// Terminate, while the backend was still there. Now the connection goes back through its
/// `Drop`, is recovered (the ping's answer read) and reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_out_cancelled_during_its_revalidation_ping_keeps_the_connection() {
    let _turn = TURN.lock().await;
    let (upstream, _) = upstream(1);
    // Polled once: the ping is sent, then the caller goes away before its answer. The
    // backend is stopped (SIGSTOP) meanwhile, so the answer cannot beat that first poll —
    // on a loaded machine it often did, and the test could never land its cancellation.
    let conn = upstream.checkout(0, Duration::from_secs(5)).await.unwrap();
    let pid = conn.cancel_token().process_id();
    {
        let _stopped = Stopped::backend(pid);
        let cancelled = futures::FutureExt::now_or_never(upstream.revalidate(conn, true));
        assert!(cancelled.is_none(), "a stopped backend answered the ping");
    }
    until("the connection to be back", || {
        upstream.tenant_status(0).idle == 1
    })
    .await;
    assert_eq!(upstream.status().open, 1);
    let conn = upstream.checkout(0, Duration::from_secs(1)).await.unwrap();
    assert_eq!(conn.cancel_token().process_id(), pid, "the same session");
}

/// A backend process stopped with SIGSTOP until this is dropped (panics included).
struct Stopped(i32);

impl Stopped {
    fn backend(pid: i32) -> Stopped {
        // SAFETY: kill(2) with a pid and a signal number; nothing is shared with Rust.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGSTOP) },
            0,
            "SIGSTOP the backend"
        );
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// Whether the server still has a backend with this process id.
async fn backend_alive(pid: i32) -> bool {
    let (client, connection) = tokio_postgres::connect(&cluster().url, tokio_postgres::NoTls)
        .await
        .expect("observer connection");
    tokio::spawn(connection);
    client
        .query_one(
            "select count(*) from pg_stat_activity where pid = $1",
            &[&pid],
        )
        .await
        .expect("pg_stat_activity")
        .get::<_, i64>(0)
        == 1
}

/// Issue 12: the socket closes in the middle of a message, in either direction. The
/// statement fails as a lost connection, the connection is never reused, its slot comes
/// back only once the server has ended the backend, and the next check-out gets a fresh,
/// working session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_closed_mid_message_frees_its_slot_and_backend() {
    let _turn = TURN.lock().await;
    for fault in [Fault::WriteCut, Fault::ReadCut] {
        let (upstream, port) = upstream(1);
        let mut conn = upstream.checkout(0, Duration::from_secs(5)).await.unwrap();
        let first = conn.cancel_token().process_id();
        arm(port, fault, Some(1));
        // A long row: the cut read holds part of a DataRow.
        let result = conn
            .fetch_text("select repeat('x', 200000), $1::int", &["7"])
            .await;
        disarm(port, fault);
        assert!(result.is_err(), "{fault:?}: the statement must fail");
        assert!(
            conn.is_broken(),
            "{fault:?}: the connection is known broken"
        );
        drop(conn);
        until("the slot to come back", || upstream.status().open == 0).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while backend_alive(first).await {
            assert!(
                Instant::now() < deadline,
                "{fault:?}: the backend never ended"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut conn = upstream.checkout(0, Duration::from_secs(5)).await.unwrap();
        assert_ne!(
            conn.cancel_token().process_id(),
            first,
            "{fault:?}: a new session"
        );
        assert_eq!(
            conn.fetch_text("select 1", &[]).await.unwrap()[0][0].as_deref(),
            Some("1")
        );
        drop(conn);
        upstream.close();
        until("the upstream to close", || upstream.status().open == 0).await;
    }
}
