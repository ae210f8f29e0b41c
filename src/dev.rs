//! A throwaway local Postgres, for `sluice dev` and for the test harness.
//!
//! It finds the machine's PostgreSQL server binaries, creates a cluster in a temporary
//! directory (as an unprivileged user when run as root — Postgres refuses to run as root),
//! with SCRAM password authentication as production servers use, starts it on a free port and
//! removes everything when dropped. A watchdog process removes it too if this process dies
//! without running its destructors (a test binary exiting, a `kill -9`).

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where PostgreSQL's server binaries (`initdb`, `postgres`) are.
#[derive(Debug, Clone)]
pub struct PostgresBinaries {
    pub bin_dir: PathBuf,
}

const INSTALL_HINT: &str = "PostgreSQL server binaries (initdb, postgres) were not found. Install them:\n\
    \x20 Debian/Ubuntu:  sudo apt-get install postgresql\n\
    \x20 Fedora/RHEL:    sudo dnf install postgresql-server\n\
    \x20 macOS:          brew install postgresql@16\n\
    or point SLUICE_PG_BIN at the directory that holds initdb and postgres.";

impl PostgresBinaries {
    /// Looks in `$SLUICE_PG_BIN`, `pg_config --bindir`, `/usr/lib/postgresql/<newest>/bin`,
    /// the usual macOS and RHEL places, then `PATH`.
    pub fn find() -> Result<PostgresBinaries, String> {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(dir) = std::env::var_os("SLUICE_PG_BIN") {
            candidates.push(dir.into());
        }
        if let Ok(output) = Command::new("pg_config").arg("--bindir").output()
            && output.status.success()
        {
            candidates.push(String::from_utf8_lossy(&output.stdout).trim().into());
        }
        let mut versioned: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
                Some((version, entry.path().join("bin")))
            })
            .collect();
        versioned.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
        candidates.extend(versioned.into_iter().map(|(_, dir)| dir));
        candidates.extend(
            [
                "/usr/pgsql-17/bin",
                "/usr/pgsql-16/bin",
                "/usr/pgsql-15/bin",
                "/opt/homebrew/bin",
                "/usr/local/bin",
            ]
            .map(PathBuf::from),
        );
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path));
        }
        candidates
            .into_iter()
            .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
            .map(|bin_dir| PostgresBinaries { bin_dir })
            .ok_or_else(|| INSTALL_HINT.to_owned())
    }

    fn command(&self, name: &str) -> Command {
        Command::new(self.bin_dir.join(name))
    }
}

/// How to set up the cluster.
#[derive(Debug, Clone)]
pub struct TempPostgresOptions {
    pub max_connections: usize,
    /// Extra `postgresql.conf` settings (`ssl`, `ssl_cert_file`, …).
    pub settings: Vec<(String, String)>,
    /// Replaces the generated `pg_hba.conf` when set.
    pub hba: Option<String>,
    /// Files to copy into the data directory before start (certificates), as (name, contents).
    pub files: Vec<(String, Vec<u8>)>,
    /// The port to listen on; a free one when `None`.
    pub port: Option<u16>,
    /// The superuser's password; a random one when `None`.
    pub password: Option<String>,
}

impl Default for TempPostgresOptions {
    fn default() -> Self {
        TempPostgresOptions {
            max_connections: 50,
            settings: Vec::new(),
            hba: None,
            files: Vec::new(),
            port: None,
            password: None,
        }
    }
}

/// A running throwaway cluster. The superuser is `postgres` with a random password.
pub struct TempPostgres {
    binaries: PostgresBinaries,
    dir: PathBuf,
    port: u16,
    password: String,
    owner: Option<(u32, u32)>,
    options: TempPostgresOptions,
    server: Option<Child>,
    _watchdog: Option<Child>,
}

impl TempPostgres {
    pub fn start(options: TempPostgresOptions) -> Result<TempPostgres, String> {
        let binaries = PostgresBinaries::find()?;
        let owner = unprivileged_owner()?;
        let dir = std::env::temp_dir().join(format!(
            "sluice-pg-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", dir.display()))?;
        }
        let password = options
            .password
            .clone()
            .unwrap_or_else(|| format!("pw{:016x}", rand::random::<u64>()));
        let mut cluster = TempPostgres {
            binaries,
            dir,
            port: options.port.unwrap_or(0),
            password,
            owner,
            options,
            server: None,
            _watchdog: None,
        };
        cluster.init()?;
        cluster.boot()?;
        Ok(cluster)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn init(&mut self) -> Result<(), String> {
        let password_file = self.dir.join("password");
        self.write_owned(&password_file, self.password.as_bytes())?;
        let output = self
            .as_owner(self.binaries.command("initdb"))
            .arg("-D")
            .arg(self.data_dir())
            .args([
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ])
            .arg(format!("--pwfile={}", password_file.display()))
            .output()
            .map_err(|e| format!("cannot run initdb: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let data = self.data_dir();
        if let Some(hba) = self.options.hba.clone() {
            self.write_owned(&data.join("pg_hba.conf"), hba.as_bytes())?;
        }
        for (name, contents) in self.options.files.clone() {
            let path = data.join(&name);
            self.write_owned(&path, &contents)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Starts the server (again, after [`TempPostgres::stop`]), on a new free port the first
    /// time and the same port after.
    fn boot(&mut self) -> Result<(), String> {
        if self.port == 0 {
            self.port = free_port()?;
        }
        let log = fs::File::create(self.dir.join("postgres.log")).map_err(|e| e.to_string())?;
        let mut command = self.as_owner(self.binaries.command("postgres"));
        command
            .arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args([
                "-c",
                &format!("max_connections={}", self.options.max_connections),
            ])
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .args([
                "-c",
                "shared_buffers=32MB",
                "-c",
                "log_min_messages=warning",
            ]);
        for (name, value) in &self.options.settings {
            command.arg("-c").arg(format!("{name}={value}"));
        }
        // Its own process group: a Ctrl-C at the terminal reaches sluice, which stops the
        // server in order, instead of reaching the server directly.
        command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start postgres: {e}"))?;
        self.server = Some(child);
        if self._watchdog.is_none() {
            self._watchdog = Some(self.watchdog()?);
        }
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let pid_file = self.data_dir().join("postmaster.pid");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(contents) = fs::read_to_string(&pid_file)
                && contents
                    .lines()
                    .nth(7)
                    .is_some_and(|status| status.trim() == "ready")
            {
                return Ok(());
            }
            if let Some(child) = self.server.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log = fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
                return Err(format!("postgres exited ({status}) while starting:\n{log}"));
            }
            if Instant::now() > deadline {
                return Err("postgres did not become ready within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A shell that waits for this process to go away (its stdin pipe closes), then stops the
    /// server and removes the directory. Normal shutdown does the same work first.
    fn watchdog(&self) -> Result<Child, String> {
        // The server's pid is read when it is needed: a restart gives it a new one.
        const SCRIPT: &str = r#"cat >/dev/null
pid=$(head -n 1 "$1/data/postmaster.pid" 2>/dev/null)
if [ -n "$pid" ]; then
  kill -INT "$pid" 2>/dev/null
  i=0
  while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  kill -KILL "$pid" 2>/dev/null
fi
rm -rf "$1""#;
        Command::new("sh")
            .args(["-c", SCRIPT, "sluice-pg-watchdog"])
            .arg(&self.dir)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the cleanup watchdog: {e}"))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// The superuser's URL for `database`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// Stops the server (fast shutdown: sessions are terminated), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.server.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again after [`TempPostgres::stop`], on the same port.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.boot()
    }

    fn as_owner(&self, mut command: Command) -> Command {
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
            // HOME of root is not readable by the postgres user; avoid surprises.
            command.env("HOME", &self.dir).current_dir(&self.dir);
        }
        command
    }

    fn write_owned(&self, path: &Path, contents: &[u8]) -> Result<(), String> {
        let mut file =
            fs::File::create(path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        file.write_all(contents).map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Running as root, Postgres must run as someone else: the `postgres` user if the machine has
/// one, else `nobody`.
fn unprivileged_owner() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        let c_name = std::ffi::CString::new(name).expect("no NUL");
        // SAFETY: getpwnam returns a pointer to static storage or null; we copy what we need.
        let entry = unsafe { libc::getpwnam(c_name.as_ptr()) };
        if !entry.is_null() {
            let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
            return Ok(Some((uid, gid)));
        }
    }
    Err(
        "running as root, and neither a `postgres` nor a `nobody` user exists to run Postgres as"
            .into(),
    )
}

/// A port nothing listens on right now.
pub fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

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

async fn seed_demo(postgres: &TempPostgres) -> Result<(), String> {
    let url = crate::config::PostgresUrl::parse(&postgres.url("postgres"))?;
    let config = crate::pg::ConnectConfig {
        target: url.target,
        user: url.user,
        password: url.password,
        database: url.database,
        tls: crate::pg::TlsConnector::disabled(),
        connect_timeout: Duration::from_secs(10),
        settings: Vec::new(),
        statement_timeout_ms: 0,
        statement_cache_size: 1,
        auth: crate::pg::AuthPolicy::default(),
    };
    let mut conn = crate::pg::PgConnection::connect(&config)
        .await
        .map_err(|e| e.to_string())?;
    conn.simple_query(
        "create table demo (id int primary key, name text not null, born date, tags text[]);
         insert into demo values (1, 'ada', '1815-12-10', '{math,engines}'),
                                 (2, 'grace', '1906-12-09', '{cobol,navy}'),
                                 (3, 'edsger', '1930-05-11', '{algorithms}');
         create table users (id serial primary key, name text not null, email text unique,
                             active boolean not null default true, credit numeric not null default 100,
                             orders int not null default 0, last_seen timestamptz not null default now());
         insert into users (name, email) values ('ada', 'ada@example.com'),
                                                ('grace', 'grace@example.com'),
                                                ('edsger', 'edsger@example.com');
         create table orders (id serial primary key, user_id int not null references users,
                              created_at timestamptz not null default now());",
    )
    .await
    .map_err(|e| e.to_string())?;
    conn.terminate(Duration::from_secs(1)).await;
    Ok(())
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

/// The files of `sluice dev --tls`, removed when dropped.
struct DevCertificates {
    dir: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl DevCertificates {
    fn write() -> Result<DevCertificates, String> {
        let dir = std::env::temp_dir().join(format!("sluice-dev-tls-{}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let ca = DevCa::new("sluice dev CA")?;
        let issued = ca.issue(&["localhost", "127.0.0.1", "::1"], 1)?;
        let files = DevCertificates {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
        };
        fs::write(&files.ca, &ca.cert_pem).map_err(|e| e.to_string())?;
        fs::write(&files.cert, &issued.cert_pem).map_err(|e| e.to_string())?;
        fs::write(&files.key, &issued.key_pem).map_err(|e| e.to_string())?;
        fs::set_permissions(&files.key, fs::Permissions::from_mode(0o600))
            .map_err(|e| e.to_string())?;
        Ok(files)
    }
}

impl Drop for DevCertificates {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A throwaway certificate authority, for `sluice dev --tls` and the TLS tests.
pub struct DevCa {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    /// The CA certificate (PEM): what clients must trust.
    pub cert_pem: String,
}

/// A certificate issued by a [`DevCa`], with its private key (PEM).
pub struct DevCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl DevCa {
    pub fn new(name: &str) -> Result<DevCa, String> {
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let cert_pem = params.self_signed(&key).map_err(|e| e.to_string())?.pem();
        Ok(DevCa {
            params,
            key,
            cert_pem,
        })
    }

    /// A server certificate for `names` (DNS names or IP addresses) with `serial`.
    pub fn issue(&self, names: &[&str], serial: u64) -> Result<DevCert, String> {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .map_err(|e| e.to_string())?;
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or("localhost"),
        );
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
        Ok(DevCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
