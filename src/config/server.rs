//! Validation of `[server]` (listeners, limits, timeouts, logging) and `[cluster]`.

use std::path::Path;

use super::raw::{
    RawCluster, RawServer, RawServerTls, at_least, check_identifier, millis, parse_addr,
};
use super::{
    ClusterConfig, ConfigError, LogFormat, ServerConfig, ServerTls, defaults, err, secrets,
};
use crate::auth::KeyHash;

impl RawCluster {
    pub(super) fn validate(self) -> Result<ClusterConfig, ConfigError> {
        check_identifier("cluster.name", &self.name)?;
        let max_replicas = self.max_replicas.unwrap_or(defaults::CLUSTER_MAX_REPLICAS);
        if !(1..=1024).contains(&max_replicas) {
            return Err(err(
                "cluster.max_replicas",
                format!("must be between 1 and 1024, found {max_replicas}"),
            ));
        }
        if let Some(advertise) = &self.advertise
            && (advertise.is_empty()
                || advertise.len() > 255
                || advertise.contains(char::is_whitespace))
        {
            return Err(err(
                "cluster.advertise",
                "must be a host:port without spaces, at most 255 characters",
            ));
        }
        Ok(ClusterConfig {
            name: self.name,
            advertise: self.advertise,
            max_replicas,
            poll_interval: millis(
                "cluster.poll_interval_ms",
                self.poll_interval_ms,
                defaults::CLUSTER_POLL_INTERVAL_MS,
            )?,
        })
    }
}

impl RawServer {
    pub(super) fn validate(self, base: &Path) -> Result<ServerConfig, ConfigError> {
        let RawServer {
            listen,
            tls,
            metrics_listen,
            max_body_bytes,
            max_response_bytes,
            max_buffered_bytes,
            max_sql_bytes,
            mut admin_keys,
            admin_keys_file,
            header_read_timeout_ms,
            body_read_timeout_ms,
            stream_stall_timeout_ms,
            shutdown_timeout_ms,
            auth_failures_per_minute,
            log_format,
            log_level,
            log_buffer_bytes,
            log_sample_rate,
        } = self;
        if let Some(file) = admin_keys_file {
            admin_keys.extend(secrets::read_list(
                "server.admin_keys_file",
                &base.join(file),
            )?);
        }
        let listen = parse_addr(
            "server.listen",
            listen.as_deref().unwrap_or(defaults::LISTEN),
        )?;
        let tls = match tls {
            Some(RawServerTls {
                cert,
                key,
                listen,
                handshake_timeout_ms,
                max_handshakes,
            }) => Some(ServerTls {
                cert: base.join(cert),
                key: base.join(key),
                listen: listen
                    .map(|l| parse_addr("server.tls.listen", &l))
                    .transpose()?,
                handshake_timeout: millis(
                    "server.tls.handshake_timeout_ms",
                    handshake_timeout_ms,
                    defaults::TLS_HANDSHAKE_TIMEOUT_MS,
                )?,
                max_handshakes: at_least(
                    "server.tls.max_handshakes",
                    max_handshakes.unwrap_or(defaults::TLS_MAX_HANDSHAKES),
                    1,
                )?,
            }),
            None => None,
        };
        let metrics_listen = metrics_listen
            .map(|l| parse_addr("server.metrics_listen", &l))
            .transpose()?;
        let admin_keys = admin_keys
            .iter()
            .enumerate()
            .map(|(i, k)| KeyHash::parse(k).map_err(|e| err(format!("server.admin_keys[{i}]"), e)))
            .collect::<Result<_, _>>()?;
        let max_body_bytes = at_least(
            "server.max_body_bytes",
            max_body_bytes.unwrap_or(defaults::MAX_BODY_BYTES),
            64,
        )?;
        let max_response_bytes = at_least(
            "server.max_response_bytes",
            max_response_bytes.unwrap_or(defaults::MAX_RESPONSE_BYTES),
            1024,
        )?;
        // One request's body must always fit (a response is charged once it exists, whatever
        // its size: see api::memory).
        let max_buffered_bytes = at_least(
            "server.max_buffered_bytes",
            max_buffered_bytes.unwrap_or(
                defaults::MAX_BUFFERED_BYTES.max(4 * max_body_bytes.max(max_response_bytes)),
            ),
            max_body_bytes,
        )?;
        Ok(ServerConfig {
            listen,
            tls,
            metrics_listen,
            max_body_bytes,
            max_response_bytes,
            max_buffered_bytes,
            max_sql_bytes: at_least(
                "server.max_sql_bytes",
                max_sql_bytes.unwrap_or(defaults::MAX_SQL_BYTES),
                64,
            )?,
            admin_keys,
            header_read_timeout: millis(
                "server.header_read_timeout_ms",
                header_read_timeout_ms,
                defaults::HEADER_READ_TIMEOUT_MS,
            )?,
            body_read_timeout: millis(
                "server.body_read_timeout_ms",
                body_read_timeout_ms,
                defaults::BODY_READ_TIMEOUT_MS,
            )?,
            stream_stall_timeout: millis(
                "server.stream_stall_timeout_ms",
                stream_stall_timeout_ms,
                defaults::STREAM_STALL_TIMEOUT_MS,
            )?,
            shutdown_timeout: millis(
                "server.shutdown_timeout_ms",
                shutdown_timeout_ms,
                defaults::SHUTDOWN_TIMEOUT_MS,
            )?,
            auth_failures_per_minute: at_least(
                "server.auth_failures_per_minute",
                auth_failures_per_minute.unwrap_or(defaults::AUTH_FAILURES_PER_MINUTE) as usize,
                1,
            )? as u32,
            log_format: log_format.unwrap_or(LogFormat::Text),
            log_level: match log_level {
                Some(level) if !is_log_filter(&level) => {
                    return Err(err(
                        "server.log_level",
                        format!(
                            "\"{level}\" is not a level or filter (error, warn, info, debug, trace)"
                        ),
                    ));
                }
                Some(level) => level,
                None => "info".to_owned(),
            },
            log_buffer_bytes: at_least(
                "server.log_buffer_bytes",
                log_buffer_bytes.unwrap_or(defaults::LOG_BUFFER_BYTES),
                4096,
            )?,
            log_sample_rate: match log_sample_rate {
                None => 1.0,
                Some(rate) if rate > 0.0 && rate <= 1.0 => rate,
                Some(rate) => {
                    return Err(err(
                        "server.log_sample_rate",
                        format!("{rate} is not above 0 and at most 1"),
                    ));
                }
            },
        })
    }
}

/// Whether `filter` is a level or a `RUST_LOG`-style filter. Filters name targets, levels and
/// fields, all ASCII; tracing-subscriber's directive parser panics on some multi-byte text
/// (found by the `config` fuzz target), so anything else is refused before it gets there, and
/// a panic in the parser all the same is a refusal, not a crash of the start or reload.
/// Field-value matchers (`target[span{field=value}]`) are refused too: tracing-subscriber
/// compiles each value as a regular expression, and a short one (a run of dots) took the
/// `config` fuzz target minutes and more than 2 GB to compile; span names and targets need no
/// field matchers.
fn is_log_filter(filter: &str) -> bool {
    filter.is_ascii()
        && !filter.contains('{')
        && std::panic::catch_unwind(|| tracing_subscriber::EnvFilter::try_new(filter).is_ok())
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::tests::{KEY, config};

    /// A `log_level` with a field-value matcher made of dots compiled a regular expression for
    /// minutes, past 2 GB (found by the `config` fuzz target): the start or the reload that read
    /// it hung. Field matchers are refused; targets, spans and levels still work.
    #[test]
    fn a_log_level_with_a_field_matcher_is_refused_at_once() {
        let base = "[[upstreams]]\nname = \"main\"\nurl = \"postgres://u@h/d\"\n[[tenants]]\nid = \"t\"\n\
                    api_keys = [\"sha256:1111111111111111111111111111111111111111111111111111111111111111\"]\n";
        let dots = ".".repeat(200);
        for level in [
            format!("x[span{{field={dots}}}]=debug"),
            "sluice[request{tenant=acme}]=trace".to_owned(),
        ] {
            let started = std::time::Instant::now();
            let text = format!("[server]\nlog_level = {level:?}\n{base}");
            let error = Config::from_toml(&text, Path::new(".")).unwrap_err().0;
            assert!(error.starts_with("server.log_level"), "{error}");
            assert!(started.elapsed() < std::time::Duration::from_secs(1));
        }
        for level in ["info", "sluice=debug,hyper=warn", "sluice[request]=debug"] {
            let text = format!("[server]\nlog_level = {level:?}\n{base}");
            let config = Config::from_toml(&text, Path::new(".")).unwrap();
            assert_eq!(config.server.log_level, level);
        }
    }

    /// Found by the `config` fuzz target: tracing-subscriber's filter parser panicked on a
    /// multi-byte character (`end byte index … is not a char boundary`), so a typo in
    /// `log_level` crashed the start, or the reload that read it.
    #[test]
    fn a_log_level_with_multibyte_text_is_refused_not_a_panic() {
        for level in [
            "info\u{fffd}",
            "  ent_timeout_m\u{fffd} = 149\u{fffd},4:1111",
            "é=debug",
        ] {
            let toml = format!(
                "[server]\nlog_level = {level:?}\n[[upstreams]]\nname = \"main\"\n\
                 url = \"postgres://u:p@127.0.0.1/db\"\n[[tenants]]\nid = \"a\"\n\
                 api_keys = [\"{KEY}\"]\n"
            );
            let error = config(&toml).unwrap_err().to_string();
            assert!(error.starts_with("server.log_level"), "{error}");
        }
        assert!(is_log_filter("info,sluice::request=warn"));
    }

    #[test]
    fn log_sample_rate_is_a_share_above_zero_and_log_buffer_bytes_has_a_floor() {
        let with = |line: &str| {
            config(&format!(
                "[server]\n{line}\n[[upstreams]]\nname = \"main\"\n\
                 url = \"postgres://u:p@127.0.0.1/db\"\n[[tenants]]\nid = \"a\"\n\
                 api_keys = [\"{KEY}\"]\n"
            ))
        };
        let defaults = with("").unwrap();
        assert_eq!(defaults.server.log_sample_rate, 1.0);
        assert_eq!(
            defaults.server.log_buffer_bytes,
            crate::config::defaults::LOG_BUFFER_BYTES
        );
        assert_eq!(
            with("log_sample_rate = 0.25")
                .unwrap()
                .server
                .log_sample_rate,
            0.25
        );
        for bad in ["0", "0.0", "-0.5", "1.5", "nan", "inf"] {
            let error = with(&format!("log_sample_rate = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(
                error.starts_with("server.log_sample_rate"),
                "{bad}: {error}"
            );
        }
        let error = with("log_buffer_bytes = 100").unwrap_err().to_string();
        assert!(error.starts_with("server.log_buffer_bytes"), "{error}");
    }
}
