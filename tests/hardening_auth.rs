//! Issue 11, item 10 (auth): who may read `/metrics`, and how the gateway authenticates to
//! Postgres — no password in the clear or as MD5 to a peer it has not verified, no
//! `AuthenticationOk` before the server has proved it knows the SCRAM secret, and SCRAM channel
//! binding when asked.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;
use sluice::dev::{DevCa, TempPostgres};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Bug: `/metrics` on the public listener answered anyone, and its labels list every tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_metrics_need_an_admin_key_and_the_metrics_listener_needs_none() {
    let db = database("").await;
    let (key, hash) = key("acme");
    let (toml, admin) = with_admin(&config(&db, &hash, "", ""));
    let gateway = Gateway::start(&toml).await;
    let c = &gateway.client;
    let anonymous = c.get_as("/metrics", None).await;
    assert_status(&anonymous, http::StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(!anonymous.text.contains("acme"), "{}", anonymous.text);
    let tenant = c.get_as("/metrics", Some(&key)).await;
    assert_status(&tenant, http::StatusCode::FORBIDDEN, "forbidden");
    let with_admin = c.get_as("/metrics", Some(&admin)).await;
    assert_eq!(with_admin.status, 200, "{}", with_admin.text);
    assert!(with_admin.text.contains("sluice_build_info"));
    gateway.stop().await;

    // On its own listener, metrics need no key (keep that port private).
    let gateway = ListeningGateway::start(&config(&db, &hash, "", "")).await;
    let scrape = gateway.metrics.get_as("/metrics", None).await;
    assert_eq!(scrape.status, 200, "{}", scrape.text);
    assert_eq!(gateway.api.get_as("/metrics", None).await.status, 404);
    gateway.stop().await;
}

/// A Postgres with TLS whose `pg_hba.conf` asks `md5_user` for an MD5 password, `pw_user` for
/// a cleartext one and everyone else for SCRAM, over TLS or not.
struct AuthPostgres {
    cluster: TempPostgres,
    ca_file: PathBuf,
}

fn auth_postgres() -> &'static std::sync::Mutex<AuthPostgres> {
    static SERVER: OnceLock<std::sync::Mutex<AuthPostgres>> = OnceLock::new();
    SERVER.get_or_init(|| {
        let ca = DevCa::new("auth test CA").unwrap();
        let cert = ca.issue(&["localhost"], 11).unwrap();
        let dir = std::env::temp_dir().join(format!("sluice-auth-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &ca.cert_pem).unwrap();
        let options = tls_postgres_options(
            cert,
            "local all all scram-sha-256\n\
                 host all md5_user 127.0.0.1/32 md5\n\
                 host all pw_user 127.0.0.1/32 password\n\
                 host all all 127.0.0.1/32 scram-sha-256\n",
        );
        let cluster = TempPostgres::start(options).unwrap();
        std::sync::Mutex::new(AuthPostgres { cluster, ca_file })
    })
}

/// The roles, created once per run: `md5_user`'s password is stored as MD5 (otherwise
/// Postgres would answer an `md5` line with SCRAM).
async fn auth_roles() {
    static ROLES: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ROLES
        .get_or_init(|| async {
            let url = auth_postgres().lock().unwrap().cluster.url("postgres");
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client
                .batch_execute(
                    "set password_encryption = 'md5'; \
                     create role md5_user login password 'md5-pw'; \
                     reset password_encryption; \
                     create role pw_user login password 'pw-pw'; \
                     create role scram_user login password 'scram-pw';",
                )
                .await
                .unwrap();
        })
        .await;
}

/// A one-tenant config whose upstream logs in as `user`:`password` at `host` with the URL
/// `query`, plus `upstream_extra` lines.
async fn auth_config(
    user: &str,
    password: &str,
    host: &str,
    query: &str,
    upstream_extra: &str,
) -> (String, String) {
    auth_roles().await;
    let server = auth_postgres().lock().unwrap();
    let (key, hash) = key("acme");
    let query = query.replace("{ca}", &server.ca_file.display().to_string());
    let url = format!(
        "postgres://{user}:{password}@{host}:{}/postgres?{query}",
        server.cluster.port()
    );
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[upstreams]]\nname = \"main\"\nurl = \"{url}\"\n\
         max_connections = 3\nconnect_timeout_ms = 3000\n{upstream_extra}\n[[tenants]]\n\
         id = \"acme\"\napi_keys = [\"{hash}\"]\npool_size = 2\n"
    );
    (toml, key)
}

/// What connecting with the config's upstream gives (as `sluice check` does).
async fn connect_error(toml: &str) -> Option<String> {
    let config = sluice::config::Config::from_toml(toml, Path::new(".")).unwrap();
    sluice::pool::read_server_limit(&config.upstreams[0])
        .await
        .err()
}

/// Whether a gateway with this config serves `select 1` (200) or refuses it as unavailable.
async fn serves(toml: &str, key: &str) -> bool {
    let gateway = Gateway::start(toml).await;
    let reply = gateway
        .client
        .query(key, "select 1 as one", serde_json::json!([]))
        .await;
    gateway.stop().await;
    match reply.status {
        200 => true,
        503 => {
            assert_eq!(reply.kind(), "upstream_unavailable", "{}", reply.text);
            false
        }
        other => panic!("unexpected {other}: {}", reply.text),
    }
}

/// Bug: the gateway sent the password in the clear, or its MD5 hash, to whoever answered at
/// the upstream's address, whenever asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_and_cleartext_passwords_are_refused_to_an_unverified_server() {
    for (user, password, how) in [
        ("md5_user", "md5-pw", "as an MD5 hash"),
        ("pw_user", "pw-pw", "in the clear"),
    ] {
        for sslmode in ["disable", "require"] {
            let query = format!("sslmode={sslmode}");
            let (toml, key) = auth_config(user, password, "127.0.0.1", &query, "").await;
            let error = connect_error(&toml).await.expect("refused");
            assert!(
                error.contains(how)
                    && error.contains("allow_insecure_password_auth = true")
                    && error.contains("scram-sha-256")
                    && error.contains("verify-full"),
                "{user} with {query}: {error}"
            );
            assert!(!serves(&toml, &key).await, "{user} with {query}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_and_cleartext_passwords_go_to_a_verified_server_or_when_allowed() {
    for (user, password) in [("md5_user", "md5-pw"), ("pw_user", "pw-pw")] {
        let allowed = auth_config(
            user,
            password,
            "127.0.0.1",
            "sslmode=disable",
            "allow_insecure_password_auth = true",
        )
        .await;
        assert!(serves(&allowed.0, &allowed.1).await, "{user}, allowed");
        let verified = auth_config(
            user,
            password,
            "localhost",
            "sslmode=verify-full&sslrootcert={ca}",
            "",
        )
        .await;
        assert!(
            serves(&verified.0, &verified.1).await,
            "{user}, verify-full"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_require_binds_over_tls_and_refuses_otherwise() {
    // SCRAM-SHA-256-PLUS: the server checks the binding data, so a wrong certificate hash
    // would fail the login.
    for query in [
        "sslmode=require&channel_binding=require",
        "sslmode=verify-full&sslrootcert={ca}&channel_binding=require",
        "sslmode=require",
        "sslmode=require&channel_binding=disable",
    ] {
        let (toml, key) = auth_config("scram_user", "scram-pw", "localhost", query, "").await;
        assert_eq!(connect_error(&toml).await, None, "{query}");
        assert!(serves(&toml, &key).await, "{query}");
    }
    let (toml, _) = auth_config(
        "scram_user",
        "scram-pw",
        "127.0.0.1",
        "sslmode=disable&channel_binding=require",
        "",
    )
    .await;
    let error = connect_error(&toml).await.expect("refused without TLS");
    assert!(
        error.contains("channel_binding=require needs TLS") && error.contains("sslmode"),
        "{error}"
    );
    // A method without SCRAM cannot bind, even to a verified server.
    let (toml, _) = auth_config(
        "md5_user",
        "md5-pw",
        "localhost",
        "sslmode=verify-full&sslrootcert={ca}&channel_binding=require",
        "allow_insecure_password_auth = true",
    )
    .await;
    let error = connect_error(&toml).await.expect("refused without SCRAM");
    assert!(
        error.contains("channel_binding=require") && error.contains("scram-sha-256"),
        "{error}"
    );
    let bad =
        sluice::config::PostgresUrl::parse("postgres://u:p@localhost/d?channel_binding=maybe");
    assert!(bad.unwrap_err().contains("disable, prefer or require"));
}

/// A fake server that offers SCRAM, then says `AuthenticationOk` right after the client's
/// first message, before proving anything.
async fn impostor() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let read_startup = async |socket: &mut tokio::net::TcpStream| {
                    let len = socket.read_i32().await.ok()? as usize;
                    let mut body = vec![0; len.checked_sub(4)?];
                    socket.read_exact(&mut body).await.ok()?;
                    Some(body)
                };
                let Some(mut first) = read_startup(&mut socket).await else {
                    return;
                };
                if first.starts_with(&80877103i32.to_be_bytes()) {
                    let _ = socket.write_all(b"N").await;
                    let Some(next) = read_startup(&mut socket).await else {
                        return;
                    };
                    first = next;
                }
                let _ = first;
                let mechanisms = b"SCRAM-SHA-256\0\0";
                let mut sasl = vec![b'R'];
                sasl.extend_from_slice(&((8 + mechanisms.len()) as i32).to_be_bytes());
                sasl.extend_from_slice(&10i32.to_be_bytes());
                sasl.extend_from_slice(mechanisms);
                let _ = socket.write_all(&sasl).await;
                // The client's SASLInitialResponse.
                let mut header = [0u8; 5];
                if socket.read_exact(&mut header).await.is_err() {
                    return;
                }
                let len = i32::from_be_bytes(header[1..].try_into().unwrap()) as usize;
                let mut body = vec![0; len.saturating_sub(4)];
                let _ = socket.read_exact(&mut body).await;
                let mut ok = vec![b'R', 0, 0, 0, 8, 0, 0, 0, 0];
                ok.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
                // Then it hangs up: whatever the client sends next goes nowhere.
                let _ = socket.write_all(&ok).await;
            });
        }
    });
    (port, task)
}

/// Bug: `AuthenticationOk` was accepted in the middle of SCRAM, so a server that never proved
/// it knows the password was trusted (and sent the tenants' SQL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_ok_in_the_middle_of_scram_is_refused() {
    let (port, task) = impostor().await;
    let (key, hash) = key("acme");
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[upstreams]]\nname = \"main\"\n\
         url = \"postgres://app:secret@127.0.0.1:{port}/app?sslmode=prefer\"\n\
         max_connections = 2\nconnect_timeout_ms = 2000\n[[tenants]]\nid = \"acme\"\n\
         api_keys = [\"{hash}\"]\npool_size = 1\n"
    );
    let error = connect_error(&toml).await.expect("refused");
    assert!(
        error.contains("before proving it knows the password"),
        "{error}"
    );
    assert!(!serves(&toml, &key).await);
    task.abort();
}
