//! A running throwaway cluster: `initdb` into a temporary directory, start on a free port,
//! stop and restart on the same port, and removal (by `Drop`, or by a watchdog process if this
//! process dies without running destructors).

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::binaries::{PostgresBinaries, unprivileged_owner};

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

/// A port nothing listens on right now.
pub fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}
