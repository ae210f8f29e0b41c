//! Finding PostgreSQL's server binaries on this machine, and the unprivileged user to run them
//! as when sluice runs as root (Postgres refuses to run as root).

use std::fs;
use std::path::PathBuf;
use std::process::Command;

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

    pub(super) fn command(&self, name: &str) -> Command {
        Command::new(self.bin_dir.join(name))
    }
}

/// Running as root, Postgres must run as someone else: the `postgres` user if the machine has
/// one, else `nobody`.
pub(super) fn unprivileged_owner() -> Result<Option<(u32, u32)>, String> {
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
