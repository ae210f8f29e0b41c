//! Config fit for orchestrators, end to end through the real binary: `${VAR}` references
//! filled from the process environment and secrets read from `*_file` keys (as a Kubernetes
//! Secret volume mounts them), with no step rendering the file first.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

struct Dir(std::path::PathBuf);

impl Dir {
    fn new() -> Dir {
        let dir = std::env::temp_dir().join(format!("sluice-orch-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The config the Kubernetes example uses: address and database from the environment, the
/// Postgres password and the tenant's key hashes from mounted files.
fn template() -> &'static str {
    r#"
    [server]
    listen = "127.0.0.1:${SLUICE_TEST_PORT}"
    shutdown_timeout_ms = 5000

    [[upstreams]]
    name = "main"
    url = "postgres://postgres@127.0.0.1:${SLUICE_TEST_PG_PORT}/${SLUICE_TEST_DB}?sslmode=disable"
    password_file = "secrets/pg-password"
    max_connections = 4

    [[tenants]]
    id = "acme"
    api_keys_file = "secrets/api-keys"
    pool_size = 2
    "#
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_with_variables_and_secret_files_serves_without_rendering() {
    let db = database("").await;
    let (key, hash) = key("acme");
    let (pg_port, password) = {
        let pg = postgres().lock().unwrap();
        (pg.port(), pg.password().to_owned())
    };
    let dir = Dir::new();
    std::fs::create_dir_all(dir.0.join("secrets")).unwrap();
    // As `kubectl create secret --from-file` would store it: a trailing newline included.
    std::fs::write(dir.0.join("secrets/pg-password"), format!("{password}\n")).unwrap();
    std::fs::write(dir.0.join("secrets/api-keys"), format!("# acme\n{hash}\n")).unwrap();
    let path = dir.0.join("sluice.toml");
    std::fs::write(&path, template()).unwrap();
    let port = sluice::dev::free_port().unwrap();

    let env = [
        ("SLUICE_TEST_PORT", port.to_string()),
        ("SLUICE_TEST_PG_PORT", pg_port.to_string()),
        ("SLUICE_TEST_DB", db.clone()),
    ];
    // `sluice check` (online) reaches the server with the password from the file.
    let check = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config"])
        .arg(&path)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(&path)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = Client::new(&format!("http://127.0.0.1:{port}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.try_get("/readyz").await.map(|r| r.status) != Ok(200) {
        assert!(Instant::now() < deadline, "the gateway did not get ready");
        assert!(child.try_wait().unwrap().is_none(), "the gateway exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = client
        .query(&key, "select current_database() as db", json!([]))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json());
    assert_eq!(reply.rows()[0]["db"], json!(db));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unset_variable_refuses_the_config_naming_it_and_its_line() {
    let dir = Dir::new();
    let path = dir.0.join("sluice.toml");
    std::fs::write(&path, template()).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--offline", "--config"])
        .arg(&path)
        .env("SLUICE_TEST_PORT", "8080")
        .env_remove("SLUICE_TEST_PG_PORT")
        .env_remove("SLUICE_TEST_DB")
        .output()
        .unwrap();
    assert!(!check.status.success());
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        stderr.contains("upstreams[0].url (line 8)")
            && stderr.contains("SLUICE_TEST_PG_PORT is not set"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_check_counts_the_control_sessions_in_a_cluster_footprint() {
    let db = database("").await;
    let (_, hash) = key("acme");
    let (pg_port, password) = {
        let pg = postgres().lock().unwrap();
        (pg.port(), pg.password().to_owned())
    };
    let dir = Dir::new();
    std::fs::write(dir.0.join("pw"), &password).unwrap();
    let path = dir.0.join("sluice.toml");
    // The test server allows 60 - 3 reserved = 57: a cluster budget of 40 fits with up to 16
    // control sessions (56), not with 17 (57).
    let run = |max_replicas: usize| {
        std::fs::write(
            &path,
            format!(
                "[cluster]\nname = \"c\"\nmax_replicas = {max_replicas}\n\
                 [[upstreams]]\nname = \"main\"\nurl = \"postgres://postgres@127.0.0.1:{pg_port}/{db}?sslmode=disable\"\n\
                 password_file = \"pw\"\nmax_connections = 40\n\
                 [[tenants]]\nid = \"acme\"\napi_keys = [\"{hash}\"]\n"
            ),
        )
        .unwrap();
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let fits = run(16);
    let out = String::from_utf8_lossy(&fits.stdout).into_owned();
    assert!(fits.status.success(), "{out}");
    assert!(
        out.contains("control sessions           up to 16")
            && out.contains("footprint on the server    56"),
        "{out}"
    );
    let too_many = run(17);
    let out = String::from_utf8_lossy(&too_many.stdout).into_owned();
    assert!(!too_many.status.success(), "{out}");
    assert!(out.contains("PROBLEM") && out.contains("57"), "{out}");
}
