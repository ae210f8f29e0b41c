//! The `sluice dev` command: a throwaway Postgres, a gateway with a demo tenant in front of
//! it, and the welcome text (or one JSON line) telling how to reach both.

use std::path::Path;

use super::certs::DevCertificates;
use super::postgres::{TempPostgres, TempPostgresOptions};
use super::seed::seed_demo;

/// What `sluice dev` was asked for.
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub listen: std::net::SocketAddr,
    /// Print one JSON line (for scripts and the SDK's tests) instead of the human summary.
    pub json: bool,
    /// Serve HTTPS with a throwaway CA and certificate.
    pub tls: bool,
}

/// `sluice dev`: a throwaway Postgres with the tables the READMEs' examples use (`demo`,
/// `users`, `orders`), a gateway with a demo tenant in front of it, `export` lines and a
/// ready-to-paste `curl`; everything removed when `shutdown` completes.
pub async fn run(
    options: DevOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let postgres =
        tokio::task::spawn_blocking(|| TempPostgres::start(TempPostgresOptions::default()))
            .await
            .map_err(|e| e.to_string())??;
    seed_demo(&postgres).await?;

    let api_key = crate::auth::generate_key();
    let admin_key = crate::auth::generate_key();
    let certificates = if options.tls {
        Some(DevCertificates::write()?)
    } else {
        None
    };
    let tls_line = match &certificates {
        Some(c) => format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            c.cert.display(),
            c.key.display()
        ),
        None => String::new(),
    };
    let toml = format!(
        r#"
        [server]
        listen = "{listen}"
        {tls_line}
        admin_keys = ["{admin}"]
        shutdown_timeout_ms = 5000

        [[upstreams]]
        name = "dev"
        url = "{url}"
        max_connections = 20

        [[tenants]]
        id = "demo"
        api_keys = ["{tenant}"]
        pool_size = 10
        "#,
        listen = options.listen,
        admin = crate::auth::KeyHash::of_key(&admin_key),
        url = postgres.url("postgres"),
        tenant = crate::auth::KeyHash::of_key(&api_key),
    );
    let config =
        crate::config::Config::from_toml(&toml, Path::new(".")).map_err(|e| e.to_string())?;
    let listeners = crate::server::bind(&config).map_err(|e| {
        format!("{e}\n(pick another address with `sluice dev --listen 127.0.0.1:PORT`)")
    })?;
    let address = listeners[0].local_addr().map_err(|e| e.to_string())?;
    let url = match &certificates {
        // The certificate names localhost, so clients verify it by that name.
        Some(_) => format!("https://localhost:{}", address.port()),
        None => format!("http://{address}"),
    };
    let ca_file = certificates.as_ref().map(|c| c.ca.display().to_string());
    if options.json {
        let line = serde_json::json!({
            "url": url,
            "apiKey": api_key,
            "adminKey": admin_key,
            "databaseUrl": postgres.url("postgres"),
            "caFile": ca_file,
        });
        println!("{line}");
    } else {
        print_welcome(&url, &api_key, &admin_key, &postgres, ca_file.as_deref());
    }
    let result = crate::server::run(listeners, config, shutdown)
        .await
        .map_err(|e| e.to_string());
    tokio::task::spawn_blocking(move || drop(postgres))
        .await
        .map_err(|e| e.to_string())?;
    drop(certificates);
    if !options.json {
        eprintln!("sluice dev: stopped; the throwaway database is gone.");
    }
    result
}

fn print_welcome(
    url: &str,
    api_key: &str,
    admin_key: &str,
    postgres: &TempPostgres,
    ca_file: Option<&str>,
) {
    let cacert = ca_file
        .map(|f| format!(" --cacert {f}"))
        .unwrap_or_default();
    println!(
        r#"sluice dev: a throwaway Postgres and a gateway in front of it.

  gateway    {url}
  API key    {api_key}        (tenant "demo")
  admin key  {admin_key}
  Postgres   {database}   (direct, for psql)
  tables     demo, users, orders (the READMEs' examples use them)

For the SDK and the READMEs' examples, in your shell:

  export SLUICE_URL={url}
  export SLUICE_API_KEY={api_key}

Try it:

  curl -s{cacert} {url}/v1/query \
    -H 'Authorization: Bearer {api_key}' \
    -H 'Content-Type: application/json' \
    -d '{{"sql": "select id, name, born, tags from demo where id <= $1", "params": [2]}}'
"#,
        database = postgres.url("postgres"),
    );
    if let Some(ca) = ca_file {
        println!(
            "The certificate is signed by a throwaway CA: trust {ca}\n  curl: --cacert {ca}    Node.js: NODE_EXTRA_CA_CERTS={ca}    Deno: --cert {ca}\n"
        );
    }
    println!("Ctrl-C stops the gateway and removes the database.");
}
