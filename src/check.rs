//! `sluice check`: validates a config (already done by loading it) and prints the effective
//! limits per upstream and tenant — budget against the server's limit and against the sum of
//! the tenants' pool sizes — so an operator sees overcommit before deploying. For a tenant
//! with `jwt`, it also tries each of its end-user roles as the tenant's login role (an
//! unreadable `jwks_file` already fails the config's loading).

use std::fmt::Write;
use std::process::ExitCode;

use crate::config::Config;
use crate::pool::{read_server_limit, server_budget};

/// What the server must hold for `upstream`: its budget alone, or in cluster mode the
/// cluster-wide budget plus one control session per replica slot, summed over the upstreams
/// on the same server.
fn server_footprint(config: &Config, u: usize) -> usize {
    let upstream = &config.upstreams[u];
    match &config.cluster {
        None => server_budget(upstream, &config.upstreams),
        Some(cluster) => config
            .upstreams
            .iter()
            .filter(|other| other.target == upstream.target)
            .map(|other| crate::cluster::footprint(other, cluster))
            .sum(),
    }
}

pub async fn run(config: &Config, offline: bool) -> ExitCode {
    let mut ok = true;
    let mut out = String::from("config: valid\n");
    for (u, upstream) in config.upstreams.iter().enumerate() {
        let tenants: Vec<_> = config.tenants.iter().filter(|t| t.upstream == u).collect();
        let pool_sum: usize = tenants.iter().map(|t| t.pool_size).sum();
        let _ = writeln!(
            out,
            "\nupstream \"{}\"  {}  sslmode={}",
            upstream.name,
            upstream.target,
            upstream.tls.mode().as_str()
        );
        match &config.cluster {
            None => {
                let _ = writeln!(
                    out,
                    "  budget (max_connections)   {}",
                    upstream.max_connections
                );
            }
            Some(cluster) => {
                let _ = writeln!(
                    out,
                    "  cluster \"{}\" budget        {} data connections, all replicas together\n  control sessions           up to {} (one per replica slot, max_replicas)\n  footprint on the server    {}",
                    cluster.name,
                    upstream.max_connections,
                    cluster.max_replicas,
                    crate::cluster::footprint(upstream, cluster),
                );
            }
        }
        if offline {
            let _ = writeln!(out, "  server limit               not checked (--offline)");
        } else {
            match read_server_limit(upstream).await {
                // Upstreams on the same server share its limit: check the sum of their budgets.
                Ok(limit) => match limit.check_shared(
                    &upstream.name,
                    match &config.cluster {
                        None => upstream.max_connections,
                        Some(cluster) => crate::cluster::footprint(upstream, cluster),
                    },
                    server_footprint(config, u),
                ) {
                    Ok(()) => {
                        let _ = writeln!(
                            out,
                            "  server allows              {} (max_connections {} minus {} reserved)  OK",
                            limit.allowed(),
                            limit.max_connections,
                            limit.superuser_reserved + limit.reserved
                        );
                    }
                    Err(problem) => {
                        ok = false;
                        let _ = writeln!(
                            out,
                            "  server allows              {}  PROBLEM: {problem}",
                            limit.allowed()
                        );
                    }
                },
                Err(error) => {
                    ok = false;
                    let _ = writeln!(
                        out,
                        "  server limit               UNREACHABLE: {error} (use --offline to skip)"
                    );
                }
            }
        }
        let overcommit = if pool_sum > upstream.max_connections {
            format!(
                "overcommitted {:.1}x: shared at run time, each tenant's share proportional to its pool_size",
                pool_sum as f64 / upstream.max_connections as f64
            )
        } else {
            "fits".to_owned()
        };
        let _ = writeln!(
            out,
            "  tenants' pool sizes        {pool_sum} ({overcommit})"
        );
        for tenant in tenants {
            let effective = tenant.pool_size.min(upstream.max_connections);
            let _ = writeln!(
                out,
                "  tenant \"{}\": pool_size {}{}, rate {}/s burst {}, queue {} waiting / {} ms, statement timeout {} ms,\n    transactions {} open on at most {} connections, idle {} ms, lifetime {} ms, {} key(s)",
                tenant.id,
                tenant.pool_size,
                if effective < tenant.pool_size {
                    format!(" (capped at {effective} by the budget)")
                } else {
                    String::new()
                },
                tenant.rate_per_second,
                tenant.burst,
                tenant.max_waiting,
                tenant.queue_timeout.as_millis(),
                tenant.statement_timeout_ms,
                tenant.max_transactions,
                tenant.max_transaction_connections,
                tenant.transaction_idle_timeout.as_millis(),
                tenant.transaction_max.as_millis(),
                tenant.api_keys.len(),
            );
            if let Some(jwt) = &tenant.jwt
                && !check_end_user_roles(&mut out, upstream, tenant, jwt, offline).await
            {
                ok = false;
            }
        }
    }
    let tls = match &config.server.tls {
        Some(tls) => format!("https with {}", tls.cert.display()),
        None => "plain http (terminate TLS in front)".into(),
    };
    let _ = writeln!(
        out,
        "\nserver: listen {} ({tls}), max body {} B, max response {} B",
        config.server.listen, config.server.max_body_bytes, config.server.max_response_bytes
    );
    print!("{out}");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Writes whether the login role can take each end-user role of `jwt`; false on a problem.
async fn check_end_user_roles(
    out: &mut String,
    upstream: &crate::config::UpstreamConfig,
    tenant: &crate::config::TenantConfig,
    jwt: &crate::jwt::JwtConfig,
    offline: bool,
) -> bool {
    let roles: Vec<&str> = jwt
        .allowed_roles
        .iter()
        .chain(&jwt.anonymous_role)
        .map(String::as_str)
        .collect();
    if offline {
        let _ = writeln!(
            out,
            "    end-user roles {} not checked (--offline)",
            roles.join(", ")
        );
        return true;
    }
    match crate::pool::check_roles(upstream, tenant, &roles).await {
        Ok(refusals) => {
            let mut ok = true;
            for (role, refusal) in roles.iter().zip(refusals) {
                match refusal {
                    None => {
                        let _ = writeln!(out, "    end-user role \"{role}\"  OK");
                    }
                    Some(reason) => {
                        ok = false;
                        let _ = writeln!(
                            out,
                            "    end-user role \"{role}\"  PROBLEM: the login role cannot SET it: {reason} (it must exist and be granted: `GRANT {role} TO <login role>`, see the README's authenticator setup)"
                        );
                    }
                }
            }
            ok
        }
        Err(error) => {
            let _ = writeln!(
                out,
                "    end-user roles             UNREACHABLE: {error} (use --offline to skip)"
            );
            false
        }
    }
}
