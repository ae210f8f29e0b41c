//! Where a Postgres server is: a TCP host and port, or a Unix socket file. A leaf, so the
//! connection and the fault seams (which pick a server by port) both name it without
//! importing each other.

/// A server address: TCP host and port, or a Unix socket file
/// (`host=/var/run/postgresql` and port 5432 give `/var/run/postgresql/.s.PGSQL.5432`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tcp { host: String, port: u16 },
    Unix { path: String },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Target::Tcp { host, port } => write!(f, "{host}:{port}"),
            Target::Unix { path } => write!(f, "{path}"),
        }
    }
}
