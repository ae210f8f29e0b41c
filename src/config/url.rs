//! `postgres://` URLs as libpq reads them (the parts sluice supports), and percent decoding.

use std::path::PathBuf;

use crate::pg::tls::ChannelBindingMode;
use crate::pg::{SslMode, Target};

/// A `postgres://` URL, as libpq reads it (the parts sluice supports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresUrl {
    pub target: Target,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    pub channel_binding: ChannelBindingMode,
}

impl PostgresUrl {
    pub fn parse(url: &str) -> Result<PostgresUrl, String> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or("must start with postgres:// (or postgresql://)")?;
        let (authority_and_path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = authority_and_path
            .split_once('/')
            .unwrap_or((authority_and_path, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(info) => match info.split_once(':') {
                Some((user, password)) => (percent_decode(user)?, Some(percent_decode(password)?)),
                None => (percent_decode(info)?, None),
            },
            None => (String::new(), None),
        };
        let (mut host, mut port) = split_host_port(hostport)?;
        let mut database = percent_decode(path)?;
        let mut user = user;
        let mut password = password;
        let mut sslmode = None;
        let mut sslrootcert = None;
        let mut channel_binding = ChannelBindingMode::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("query parameter \"{pair}\" has no value"))?;
            let value = percent_decode(value)?;
            match name {
                "sslmode" => {
                    sslmode = Some(SslMode::parse(&value).ok_or_else(|| {
                        format!("sslmode \"{value}\" must be disable, prefer, require, verify-ca or verify-full")
                    })?)
                }
                "sslrootcert" => sslrootcert = Some(PathBuf::from(value)),
                "channel_binding" => {
                    channel_binding = ChannelBindingMode::parse(&value).ok_or_else(|| {
                        format!("channel_binding \"{value}\" must be disable, prefer or require")
                    })?
                }
                "host" => host = value,
                "port" => port = value.parse().map_err(|_| format!("port \"{value}\" is not a number"))?,
                "user" => user = value,
                "password" => password = Some(value),
                "dbname" => database = value,
                "application_name" | "connect_timeout" => {}
                other => return Err(format!("query parameter \"{other}\" is not supported")),
            }
        }
        if host.is_empty() {
            host = "localhost".into();
        }
        if user.is_empty() {
            return Err("no user name (postgres://USER:PASSWORD@HOST:PORT/DATABASE)".into());
        }
        if database.is_empty() {
            database = user.clone();
        }
        let unix = host.starts_with('/');
        let target = if unix {
            Target::Unix {
                path: format!("{}/.s.PGSQL.{port}", host.trim_end_matches('/')),
            }
        } else {
            Target::Tcp {
                host: host.clone(),
                port,
            }
        };
        // Verified by default where a network is crossed; a local server rarely has TLS.
        let local = unix
            || host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let sslmode = sslmode.unwrap_or(if local {
            SslMode::Prefer
        } else {
            SslMode::VerifyFull
        });
        Ok(PostgresUrl {
            target,
            user,
            password,
            database,
            sslmode,
            sslrootcert,
            channel_binding,
        })
    }
}

fn split_host_port(hostport: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("unclosed [ in the host")?;
        (host.to_owned(), after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (hostport.to_owned(), None),
        }
    };
    let port = match port {
        Some(p) if !p.is_empty() => p
            .parse()
            .map_err(|_| format!("port \"{p}\" is not a number"))?,
        _ => 5432,
    };
    Ok((percent_decode(&host)?, port))
}

pub(crate) fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .ok_or("a % in the URL is not followed by two hex digits")?;
            out.push(
                u8::from_str_radix(hex, 16).map_err(|_| format!("%{hex} is not a valid escape"))?,
            );
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the URL decodes to invalid UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_urls() {
        let url =
            PostgresUrl::parse("postgresql://u:p@db.example.com:6543/app?sslmode=require").unwrap();
        assert_eq!(
            url.target,
            Target::Tcp {
                host: "db.example.com".into(),
                port: 6543
            }
        );
        assert_eq!(url.sslmode, SslMode::Require);
        let remote = PostgresUrl::parse("postgres://u@db.example.com/app").unwrap();
        assert_eq!(
            remote.sslmode,
            SslMode::VerifyFull,
            "remote servers are verified by default"
        );
        let socket = PostgresUrl::parse("postgres://u@/app?host=/var/run/postgresql").unwrap();
        assert_eq!(
            socket.target,
            Target::Unix {
                path: "/var/run/postgresql/.s.PGSQL.5432".into()
            }
        );
        let v6 = PostgresUrl::parse("postgres://u@[::1]:5433").unwrap();
        assert_eq!(
            v6.target,
            Target::Tcp {
                host: "::1".into(),
                port: 5433
            }
        );
        assert_eq!(v6.database, "u");
        assert!(PostgresUrl::parse("postgres://u@h/d?sslmode=maybe").is_err());
        assert!(PostgresUrl::parse("postgres://h/d").is_err());
    }
}
